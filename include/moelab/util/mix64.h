// splitmix64's finaliser: a cheap, well-mixed 64-bit hash. Used where a decision must be a pure
// function of (seed, step) or of a token id, so that it survives a resume and needs no saved state.
#pragma once
#include <cstdint>

namespace moelab {

inline uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// A uniform draw in [0, 1) determined by two integers.
inline double uniform_from(uint64_t seed, uint64_t counter) {
  return static_cast<double>(mix64(mix64(seed) ^ counter) >> 11) * 0x1.0p-53;
}

}  // namespace moelab
