//go:build re2

package re2size

/*
#cgo CXXFLAGS: -std=c++17
#cgo LDFLAGS: -lre2 -pthread
#include <stdlib.h>
#include "re2size.h"
*/
import "C"

import "errors"

// Sizes are RE2's program sizes of a regex: Program is what Envoy checks
// (RE2::ProgramSize); Reverse (RE2::ReverseProgramSize) is for
// information, Envoy does not check it.
type Sizes struct {
	Program, Reverse int
}

// Measure compiles pattern with RE2 as Envoy does (default options,
// errors not logged, max_mem 8 MiB) and returns its program sizes, or
// RE2's error when the pattern does not compile.
func Measure(pattern string) (Sizes, error) {
	p := C.CBytes([]byte(pattern))
	defer C.free(p)
	var reverse C.int
	var msg [512]C.char
	n := C.vigil_re2_program_size((*C.char)(p), C.size_t(len(pattern)), &reverse, &msg[0], C.size_t(len(msg)))
	if n < 0 {
		return Sizes{}, errors.New(C.GoString(&msg[0]))
	}
	return Sizes{Program: int(n), Reverse: int(reverse)}, nil
}
