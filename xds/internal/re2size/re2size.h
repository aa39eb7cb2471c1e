//go:build re2

#ifndef VIGIL_RE2SIZE_H
#define VIGIL_RE2SIZE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// vigil_re2_program_size compiles the len bytes at pattern with RE2 as
// Envoy does and returns RE2::ProgramSize(), storing
// RE2::ReverseProgramSize() in *reverse; on a compile error it returns -1
// and writes RE2's message (NUL-terminated, truncated) to err.
int vigil_re2_program_size(const char* pattern, size_t len, int* reverse, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
