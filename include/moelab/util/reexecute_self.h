// Running this program again from the start: what moelab does when a setting only takes effect
// before the libraries load (OpenBLAS's core type, the order of preloaded libraries).
#pragma once
#include <unistd.h>

#include <vector>

namespace moelab {

// Replaces this process with /proc/self/exe and the same arguments, under the environment as it is
// now (the process id stays). Returns only when execv failed.
inline void reexecute_self(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  args.push_back(nullptr);
  execv("/proc/self/exe", args.data());
}

}  // namespace moelab
