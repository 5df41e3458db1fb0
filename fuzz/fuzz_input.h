// Shared by the fuzz targets (libFuzzer): turning the fuzzer's bytes into the files a reader takes.
// A reader may refuse any input with moelab::Error (a one-line message); anything else escaping it,
// a crash or a sanitizer report is a bug the fuzzer found.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

// Each target's entry point: libFuzzer's in a fuzz build; in the test suite (MOELAB_FUZZ_IN_TESTS),
// moelab_fuzz_NAME, which replays the seeds and every crash input found so far.
#ifdef MOELAB_FUZZ_IN_TESTS
#define MOELAB_FUZZ_TARGET(name) int moelab_fuzz_##name(const uint8_t* data, size_t size)
#else
#define MOELAB_FUZZ_TARGET(name) extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
#endif

namespace moelab::fuzz {

// A directory of this process's own, emptied for each input.
inline std::string scratch_directory() {
  static const std::string dir = [] {
    auto path = std::filesystem::temp_directory_path() / ("moelab-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    return path.string();
  }();
  for (const auto& entry : std::filesystem::directory_iterator(dir)) std::filesystem::remove_all(entry.path());
  return dir;
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The input cut at NUL bytes into at most `count` parts (the last keeps any further NULs); missing
// parts are empty. How one input holds several files.
inline std::vector<std::string> parts_of(const uint8_t* data, size_t size, size_t count) {
  std::vector<std::string> parts(count);
  size_t part = 0;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0 && part + 1 < count) {
      ++part;
      continue;
    }
    parts[part] += static_cast<char>(data[i]);
  }
  return parts;
}

}  // namespace moelab::fuzz
