//go:build re2

#include "re2size.h"

#include <re2/re2.h>

#include <cstdio>
#include <string>

// Envoy (source/common/common/regex.cc, CompiledGoogleReMatcher) builds
// re2::RE2(regex, options) with RE2's default options except log_errors
// off (RE2::Quiet) and, in recent versions, max_mem clamped to at least
// RE2's default 8 MiB (for the default error level of 100), then compares
// ProgramSize() with the error level. Neither option changes the program
// size of a regex that compiles.
int vigil_re2_program_size(const char* pattern, size_t len, int* reverse, char* err, size_t errlen) {
  re2::RE2::Options options;
  options.set_log_errors(false);
  options.set_max_mem(8 << 20);
  re2::RE2 re(std::string(pattern, len), options);
  if (!re.ok()) {
    if (errlen > 0) {
      std::snprintf(err, errlen, "%s", re.error().c_str());
    }
    return -1;
  }
  if (reverse != nullptr) {
    *reverse = re.ReverseProgramSize();
  }
  return re.ProgramSize();
}
