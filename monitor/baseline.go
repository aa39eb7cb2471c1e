package monitor

import (
	"math"
)

// ewma is an exponentially weighted mean and variance of one quantity,
// in 8 bytes.
type ewma struct {
	Mean, Var float32
}

// add folds x in with weight alpha (West's incremental form).
func (w *ewma) add(x float64, alpha float64) {
	if w.Mean == 0 && w.Var == 0 {
		w.Mean = float32(x) // the first sample, not a pull from zero
		return
	}
	m, v := float64(w.Mean), float64(w.Var)
	d := x - m
	m += alpha * d
	v = (1 - alpha) * (v + alpha*d*d)
	w.Mean, w.Var = float32(m), float32(v)
}

// addZeros folds in n samples of zero.
func (w *ewma) addZeros(n int, alpha float64) {
	for range min(n, 64) {
		w.add(0, alpha)
	}
}

func (w *ewma) sd() float64 { return math.Sqrt(math.Max(float64(w.Var), 0)) }

// above is the threshold mean + k·sd + floor.
func (w *ewma) above(k, floor float64) float64 {
	return float64(w.Mean) + k*w.sd() + floor
}

// bloom is a Bloom filter of n 64-bit words with three probes.
type bloom []uint64

func (b bloom) probes(h uint64) (uint, uint, uint) {
	n := uint64(len(b)) * 64
	h2 := h>>33 | h<<31
	return uint(h % n), uint((h + h2) % n), uint((h + 2*h2) % n)
}

func (b bloom) has(h uint64) bool {
	p1, p2, p3 := b.probes(h)
	return b[p1/64]&(1<<(p1%64)) != 0 && b[p2/64]&(1<<(p2%64)) != 0 && b[p3/64]&(1<<(p3%64)) != 0
}

func (b bloom) add(h uint64) {
	p1, p2, p3 := b.probes(h)
	b[p1/64] |= 1 << (p1 % 64)
	b[p2/64] |= 1 << (p2 % 64)
	b[p3/64] |= 1 << (p3 % 64)
}

// hashString is FNV-1a with a final mix: stable across processes and
// members (ownership and filters must agree everywhere).
func hashString(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix(h)
}

func mix(h uint64) uint64 {
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
