// Package re2size measures a regex as Envoy's RE2 engine compiles it: the
// program size Envoy compares with re2.max_program_size.error_level
// (default 100) before accepting a safe_regex.
//
// It links Google RE2 through cgo (Debian: libre2-dev, g++) and is built
// only with the re2 build tag (go test -tags re2, see the Makefile's re2
// target); without it the package is empty.
package re2size
