// TOML config and --set overrides: parse, validate, and the resolved config.toml must read back
// as the same config (what a resume relies on).
#include <cstdlib>

#include "fuzz_input.h"
#include "moelab/config/config.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(config) {
  const auto parts = moelab::fuzz::parts_of(data, size, 2);
  try {
    auto config = moelab::Config::from_toml_string(parts[0], "fuzz.toml");
    size_t start = 0;
    while (start < parts[1].size()) {  // one --set per line
      const size_t end = std::min(parts[1].find('\n', start), parts[1].size());
      try {
        config.apply_override(parts[1].substr(start, end - start));
      } catch (const moelab::Error&) {
      }
      start = end + 1;
    }
    config.validate();
    const auto text = config.to_toml();
    const auto again = moelab::Config::from_toml_string(text, "resolved config.toml");
    if (again.to_toml() != text) std::abort();  // written and read back differ
  } catch (const moelab::Error&) {
  }
  return 0;
}
