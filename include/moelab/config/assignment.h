// How a `--set section.key = value` assignment splits into key and value. Config::apply_override,
// the evaluation-settings filter and the sweep's override merging all read assignments; they must
// agree on what the key is, spaces around '=' included, or one of them refuses what another accepts.
#pragma once
#include <string>

#include "moelab/util/trim.h"

namespace moelab {

struct Assignment {
  std::string key;    // "moe.k" of " moe.k = 2 "
  std::string value;  // "2" of the same
  bool has_equals;    // false for "moe.k": no value was given at all
};

inline Assignment split_assignment(const std::string& text) {
  const auto equals = text.find('=');
  if (equals == std::string::npos) return {trim(text), "", false};
  return {trim(text.substr(0, equals)), trim(text.substr(equals + 1)), true};
}

}  // namespace moelab
