package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vigil-iot/vigil/topology"
)

// Lists for the console: zones, the gateways of a zone and devices, each
// page read from the member's snapshot. Device search scans one buffer of
// every device name (built once per document), so it answers in
// milliseconds at a million devices; state filters walk the runtime state,
// which holds only the subjects that have some.

const (
	defaultPage = 50
	maxPage     = 500
	maxQueryLen = 128
	// summaryTTL bounds how often the fleet summary walks the state.
	summaryTTL = 2 * time.Second
)

// DeviceRow is one device in a list.
type DeviceRow struct {
	Name    string `json:"name"`
	Class   string `json:"class"`
	Gateway string `json:"gateway"`
	Zone    string `json:"zone"`
	// Quarantine is set while the device is quarantined.
	Quarantine *topology.Quarantine `json:"quarantine,omitempty"`
	Risk       int                  `json:"risk"`
	// Attestation is passed, failed, expired or "" (none recorded).
	Attestation string `json:"attestation,omitempty"`
	Firmware    string `json:"firmware,omitempty"`
}

// DeviceList answers GET /v1/devices.
type DeviceList struct {
	Revision topology.Revision `json:"revision"`
	Total    int               `json:"total"`
	Offset   int               `json:"offset"`
	Devices  []DeviceRow       `json:"devices"`
}

// ZoneRow is one zone with its counts.
type ZoneRow struct {
	Name     string `json:"name"`
	Gateways int    `json:"gateways"`
	Devices  int    `json:"devices"`
	Services int    `json:"services"`
}

// GatewayRow is one gateway with its counts.
type GatewayRow struct {
	Name        string               `json:"name"`
	Zone        string               `json:"zone"`
	Devices     int                  `json:"devices"`
	Quarantine  *topology.Quarantine `json:"quarantine,omitempty"`
	Risk        int                  `json:"risk"`
	Attestation string               `json:"attestation,omitempty"`
}

// FleetSummary answers GET /v1/console/summary.
type FleetSummary struct {
	Revision           topology.Revision `json:"revision"`
	DocumentRevision   topology.Revision `json:"documentRevision"`
	Zones              int               `json:"zones"`
	Gateways           int               `json:"gateways"`
	Devices            int               `json:"devices"`
	Services           int               `json:"services"`
	Flows              int               `json:"flows"`
	Quarantined        int               `json:"quarantined"`
	AtRisk             int               `json:"atRisk"`
	AttestationPassed  int               `json:"attestationPassed"`
	AttestationFailed  int               `json:"attestationFailed"`
	AttestationExpired int               `json:"attestationExpired"`
	// ComputedAt: the state counts are at most a couple of seconds old.
	ComputedAt time.Time `json:"computedAt"`
	// staleAt is when the first attestation counted as passed expires:
	// from then on the counts are wrong even if the revision stays.
	staleAt time.Time
}

// fleetIndex caches, per document, the device name buffer search scans,
// and the last fleet summary.
type fleetIndex struct {
	mu      sync.Mutex
	names   atomic.Pointer[deviceNames]
	summary atomic.Pointer[FleetSummary]
}

type deviceNames struct {
	ix      *topology.Index
	devices []*topology.Device // sorted by name
	buf     []byte             // lower-cased names, each followed by '\n'
	starts  []int32            // where each name begins in buf
}

func (f *fleetIndex) namesOf(ix *topology.Index) *deviceNames {
	if n := f.names.Load(); n != nil && n.ix == ix {
		return n
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := f.names.Load(); n != nil && n.ix == ix {
		return n
	}
	devs := ix.Devices()
	n := &deviceNames{ix: ix, devices: devs, starts: make([]int32, len(devs))}
	size := 0
	for _, d := range devs {
		size += len(d.Name) + 1
	}
	n.buf = make([]byte, 0, size)
	for i, d := range devs {
		n.starts[i] = int32(len(n.buf))
		n.buf = append(n.buf, strings.ToLower(d.Name)...)
		n.buf = append(n.buf, '\n')
	}
	f.names.Store(n)
	return n
}

// match calls fn with the index of every device whose name contains q
// (lower case, no newline), in name order, until fn returns false.
func (n *deviceNames) match(q string, fn func(i int) bool) {
	needle := []byte(q)
	pos, last := 0, 0
	for pos < len(n.buf) {
		k := bytes.Index(n.buf[pos:], needle)
		if k < 0 {
			return
		}
		at := int32(pos + k)
		// Matches come in name order: a near match is found by stepping
		// from the last one, a far one by binary search.
		i := last
		for steps := 0; i+1 < len(n.starts) && n.starts[i+1] <= at; steps++ {
			if steps == 16 {
				i = sort.Search(len(n.starts), func(j int) bool { return n.starts[j] > at }) - 1
				break
			}
			i++
		}
		last = i
		if !fn(i) {
			return
		}
		if i+1 >= len(n.starts) {
			return
		}
		pos = int(n.starts[i+1])
	}
}

func pageParams(r *http.Request) (offset, limit int, err error) {
	q := r.URL.Query()
	limit = defaultPage
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 0 || limit > maxPage {
			return 0, 0, badRequest("limit must be a number from 0 to %d", maxPage)
		}
	}
	if v := q.Get("offset"); v != "" {
		if offset, err = strconv.Atoi(v); err != nil || offset < 0 {
			return 0, 0, badRequest("offset must be a number from 0")
		}
	}
	return offset, limit, nil
}

func attestationOf(st *topology.SubjectState, now time.Time) (status, firmware string) {
	if st == nil || st.Attestation == nil {
		return "", ""
	}
	a := st.Attestation
	status = a.Status
	if status == "" {
		status = "passed"
	}
	if status == "passed" && !a.ExpiresAt.IsZero() && now.After(a.ExpiresAt) {
		status = "expired"
	}
	return status, a.FirmwareVersion
}

func (s *Server) deviceRow(snap *topology.Snapshot, d *topology.Device, now time.Time) DeviceRow {
	row := DeviceRow{Name: d.Name, Class: d.Class, Gateway: d.Gateway}
	if g, ok := snap.Index().Gateway(d.Gateway); ok {
		row.Zone = g.Zone
	}
	st := snap.SubjectState(topology.Subject{Kind: topology.KindDevice, Name: d.Name})
	if st != nil {
		row.Quarantine = st.Quarantine
		if st.Risk != nil {
			row.Risk = st.Risk.Score
		}
	}
	row.Attestation, row.Firmware = attestationOf(st, now)
	return row
}

// listDevices serves GET /v1/devices: every device, or those of a zone or
// gateway, whose name contains q, optionally only those in a state
// (quarantined, at-risk, attestation-failed, attestation-expired), a page
// at a time (offset, limit ≤ 500), sorted by name (at-risk: by risk, then
// name). Total counts every match.
func (s *Server) listDevices(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.snapshot(w, r)
	if err != nil {
		return err
	}
	if !snap.HasDocument() {
		return notFound("no topology has been applied yet")
	}
	offset, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	qv := r.URL.Query()
	q := strings.ToLower(strings.TrimSpace(qv.Get("q")))
	if len(q) > maxQueryLen || strings.ContainsAny(q, "\n\r") {
		return badRequest("q must be at most %d characters on one line", maxQueryLen)
	}
	zone, gateway, state := qv.Get("zone"), qv.Get("gateway"), qv.Get("state")
	ix := snap.Index()
	if zone != "" {
		if _, ok := ix.Zone(zone); !ok {
			return notFound("no zone named %q at revision %d", zone, snap.Revision())
		}
	}
	if gateway != "" {
		if _, ok := ix.Gateway(gateway); !ok {
			return notFound("no gateway named %q at revision %d", gateway, snap.Revision())
		}
	}
	now := s.cfg.Now()
	keep := func(d *topology.Device) bool {
		if gateway != "" && d.Gateway != gateway {
			return false
		}
		if zone != "" {
			if g, ok := ix.Gateway(d.Gateway); !ok || g.Zone != zone {
				return false
			}
		}
		return q == "" || strings.Contains(strings.ToLower(d.Name), q)
	}
	out := DeviceList{Revision: snap.Revision(), Offset: offset, Devices: []DeviceRow{}}
	page := func(d *topology.Device) {
		if out.Total >= offset && len(out.Devices) < limit {
			out.Devices = append(out.Devices, s.deviceRow(snap, d, now))
		}
		out.Total++
	}
	switch {
	case state != "":
		match, byRisk, err := stateFilter(state, now)
		if err != nil {
			return err
		}
		type hit struct {
			d    *topology.Device
			risk int
		}
		var hits []hit
		snap.State().Range(func(sub topology.Subject, st *topology.SubjectState) bool {
			if sub.Kind == topology.KindDevice && match(st) {
				if d, ok := ix.Device(sub.Name); ok && keep(d) {
					h := hit{d: d}
					if st.Risk != nil {
						h.risk = st.Risk.Score
					}
					hits = append(hits, h)
				}
			}
			return true
		})
		// Each hit's risk is read once, above: looking it up in the state
		// on every comparison made the sort of 20,000 devices at risk
		// cost 85 ms.
		slices.SortFunc(hits, func(a, b hit) int {
			if byRisk && a.risk != b.risk {
				return b.risk - a.risk
			}
			return strings.Compare(a.d.Name, b.d.Name)
		})
		for _, h := range hits {
			page(h.d)
		}
	case gateway != "":
		for _, d := range ix.DevicesOf(gateway) {
			if keep(d) {
				page(d)
			}
		}
	case zone != "":
		var devs []*topology.Device
		for _, g := range ix.GatewaysIn(zone) {
			for _, d := range ix.DevicesOf(g.Name) {
				if keep(d) {
					devs = append(devs, d)
				}
			}
		}
		slices.SortFunc(devs, func(a, b *topology.Device) int { return strings.Compare(a.Name, b.Name) })
		for _, d := range devs {
			page(d)
		}
	case q == "":
		all := ix.Devices()
		out.Total = len(all)
		for i := offset; i < len(all) && i < offset+limit; i++ {
			out.Devices = append(out.Devices, s.deviceRow(snap, all[i], now))
		}
	default:
		n := s.fleet.namesOf(ix)
		n.match(q, func(i int) bool { page(n.devices[i]); return true })
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// stateFilter returns what a state= filter keeps, and whether its list is
// sorted by risk.
func stateFilter(state string, now time.Time) (func(*topology.SubjectState) bool, bool, error) {
	switch state {
	case "quarantined":
		return func(st *topology.SubjectState) bool { return st.Quarantine != nil }, false, nil
	case "at-risk":
		return func(st *topology.SubjectState) bool { return st.Risk != nil && st.Risk.Score > 0 }, true, nil
	case "attestation-failed", "attestation-expired", "attested":
		want := map[string]string{"attestation-failed": "failed", "attestation-expired": "expired", "attested": "passed"}[state]
		return func(st *topology.SubjectState) bool { a, _ := attestationOf(st, now); return a == want }, false, nil
	}
	return nil, false, badRequest("state must be quarantined, at-risk, attested, attestation-failed or attestation-expired, not %q", state)
}

func (s *Server) listZones(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.snapshot(w, r)
	if err != nil {
		return err
	}
	ix := snap.Index()
	out := struct {
		Revision topology.Revision `json:"revision"`
		Zones    []ZoneRow         `json:"zones"`
	}{Revision: snap.Revision(), Zones: []ZoneRow{}}
	if snap.HasDocument() {
		for _, z := range ix.Zones() {
			row := ZoneRow{Name: z.Name, Services: len(ix.ServicesIn(z.Name))}
			for _, g := range ix.GatewaysIn(z.Name) {
				row.Gateways++
				row.Devices += len(ix.DevicesOf(g.Name))
			}
			out.Zones = append(out.Zones, row)
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) listGateways(w http.ResponseWriter, r *http.Request) error {
	snap, err := s.snapshot(w, r)
	if err != nil {
		return err
	}
	offset, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	ix := snap.Index()
	zone := r.PathValue("zone")
	if _, ok := ix.Zone(zone); !ok {
		return notFound("no zone named %q at revision %d", zone, snap.Revision())
	}
	q := strings.ToLower(strings.TrimSpace(r.URL.Query().Get("q")))
	now := s.cfg.Now()
	out := struct {
		Revision topology.Revision `json:"revision"`
		Total    int               `json:"total"`
		Offset   int               `json:"offset"`
		Gateways []GatewayRow      `json:"gateways"`
	}{Revision: snap.Revision(), Offset: offset, Gateways: []GatewayRow{}}
	for _, g := range ix.GatewaysIn(zone) {
		if q != "" && !strings.Contains(strings.ToLower(g.Name), q) {
			continue
		}
		if out.Total >= offset && len(out.Gateways) < limit {
			row := GatewayRow{Name: g.Name, Zone: g.Zone, Devices: len(ix.DevicesOf(g.Name))}
			if st := snap.SubjectState(topology.Subject{Kind: topology.KindGateway, Name: g.Name}); st != nil {
				row.Quarantine = st.Quarantine
				if st.Risk != nil {
					row.Risk = st.Risk.Score
				}
				row.Attestation, _ = attestationOf(st, now)
			}
			out.Gateways = append(out.Gateways, row)
		}
		out.Total++
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// consoleSummary counts the fleet and its states. Walking the state of a
// million devices takes tens of milliseconds, so the counts are reused for
// summaryTTL while the revision moves (the monitor writes risk often), and
// while it stays until an attestation counted as passed expires.
func (s *Server) consoleSummary(w http.ResponseWriter, r *http.Request) error {
	snap := s.cfg.Store.Current()
	now := s.cfg.Now()
	if ix := snap.Index(); snap.HasDocument() {
		// The topology page asks for the summary first: build the search
		// buffer of a new document now, before the first search needs it.
		if n := s.fleet.names.Load(); n == nil || n.ix != ix {
			go s.fleet.namesOf(ix)
		}
	}
	if c := s.fleet.summary.Load(); c != nil && (now.Sub(c.ComputedAt) < summaryTTL ||
		c.Revision == snap.Revision() && (c.staleAt.IsZero() || !now.After(c.staleAt))) {
		writeJSON(w, http.StatusOK, c)
		return nil
	}
	ix := snap.Index()
	sum := &FleetSummary{Revision: snap.Revision(), DocumentRevision: snap.DocumentRevision(), ComputedAt: now}
	if snap.HasDocument() {
		sum.Zones, sum.Gateways, sum.Devices, sum.Services, sum.Flows = ix.NumZones(), ix.NumGateways(), ix.NumDevices(), ix.NumServices(), ix.NumFlows()
	}
	snap.State().Range(func(sub topology.Subject, st *topology.SubjectState) bool {
		if sub.Kind != topology.KindDevice && sub.Kind != topology.KindGateway {
			return true
		}
		if st.Quarantine != nil {
			sum.Quarantined++
		}
		if st.Risk != nil && st.Risk.Score > 0 {
			sum.AtRisk++
		}
		switch a, _ := attestationOf(st, now); a {
		case "passed":
			sum.AttestationPassed++
			if exp := st.Attestation.ExpiresAt; !exp.IsZero() && (sum.staleAt.IsZero() || exp.Before(sum.staleAt)) {
				sum.staleAt = exp
			}
		case "failed":
			sum.AttestationFailed++
		case "expired":
			sum.AttestationExpired++
		}
		return true
	})
	s.fleet.summary.Store(sum)
	writeJSON(w, http.StatusOK, sum)
	return nil
}

// ProxyRow is one proxy in GET /v1/cluster/proxies: the member it is
// connected to and its status as that member reports it (xds.ProxyStatus).
type ProxyRow struct {
	Member string          `json:"member"`
	Proxy  json.RawMessage `json:"proxy"`
}

// ProxyPage answers GET /v1/cluster/proxies.
type ProxyPage struct {
	AnsweredBy string `json:"answeredBy"`
	// Total counts the proxies that match; Nacked those of them whose
	// latest version of some type was rejected.
	Total   int        `json:"total"`
	Nacked  int        `json:"nacked"`
	Offset  int        `json:"offset"`
	Proxies []ProxyRow `json:"proxies"`
	// Errors names the members that could not be asked.
	Errors []MemberError `json:"errors,omitempty"`
}

// MemberError is a member that did not answer.
type MemberError struct {
	Member string `json:"member"`
	Error  string `json:"error"`
}

type proxyKey struct {
	NodeID string
	Types  []struct {
		Nack json.RawMessage
	}
}

// clusterProxies asks every member for the proxies connected to it and
// answers one page of them, sorted by node ID: ?q= (node ID contains),
// ?nacked=true (only those with a NACK), offset and limit.
func (s *Server) clusterProxies(w http.ResponseWriter, r *http.Request) error {
	offset, limit, err := pageParams(r)
	if err != nil {
		return err
	}
	q := r.URL.Query().Get("q")
	onlyNacked := r.URL.Query().Get("nacked") == "true"
	st, err := s.cfg.Store.Status()
	if err != nil {
		return err
	}
	lists := make([][]json.RawMessage, len(st.Members))
	errs := make([]string, len(st.Members))
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i, m := range st.Members {
		switch {
		case m.ID == st.ID && s.cfg.XDS == nil:
			errs[i] = "this member serves no xDS"
		case m.ID == st.ID:
			data, err := json.Marshal(s.cfg.XDS.ProxyStatus())
			if err == nil {
				err = json.Unmarshal(data, &lists[i])
			}
			if err != nil {
				errs[i] = err.Error()
			}
		case m.APIAddr == "":
			errs[i] = "member has not registered its API address"
		default:
			wg.Add(1)
			go func(i int, addr string) {
				defer wg.Done()
				var out struct {
					Proxies []json.RawMessage `json:"proxies"`
				}
				if err := s.cfg.Connector.Client(addr, s.cfg.PeerToken).do(ctx, http.MethodGet, "/v1/proxies", "", nil, &out); err != nil {
					errs[i] = err.Error()
					return
				}
				lists[i] = out.Proxies
			}(i, m.APIAddr)
		}
	}
	wg.Wait()
	type entry struct {
		row    ProxyRow
		node   string
		nacked bool
	}
	var all []entry
	out := ProxyPage{AnsweredBy: st.ID, Offset: offset, Proxies: []ProxyRow{}}
	for i, m := range st.Members {
		if errs[i] != "" {
			out.Errors = append(out.Errors, MemberError{Member: m.ID, Error: errs[i]})
		}
		for _, raw := range lists[i] {
			var k proxyKey
			if json.Unmarshal(raw, &k) != nil || q != "" && !strings.Contains(k.NodeID, q) {
				continue
			}
			e := entry{row: ProxyRow{Member: m.ID, Proxy: raw}, node: k.NodeID}
			for _, t := range k.Types {
				e.nacked = e.nacked || len(t.Nack) > 0 && string(t.Nack) != "null"
			}
			if onlyNacked && !e.nacked {
				continue
			}
			if e.nacked {
				out.Nacked++
			}
			all = append(all, e)
		}
	}
	slices.SortFunc(all, func(a, b entry) int {
		if c := strings.Compare(a.node, b.node); c != 0 {
			return c
		}
		return strings.Compare(a.row.Member, b.row.Member)
	})
	out.Total = len(all)
	for i := offset; i < len(all) && i < offset+limit; i++ {
		out.Proxies = append(out.Proxies, all[i].row)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}
