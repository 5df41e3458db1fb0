// Which copy of libstdc++'s std::filesystem this process calls.
//
// PyPI's LibTorch 2.x (libtorch_cpu.so, 2.11 and 2.15 at least) carries its own copy of libstdc++'s
// std::filesystem and exports it without symbol versions. An unversioned definition satisfies a
// versioned reference, so the dynamic linker binds a program's std::filesystem calls to whichever of
// libtorch_cpu.so and libstdc++.so.6 it meets first. Calls that land in LibTorch's copy mix two
// builds of one data structure, and iterating or removing a directory crashes (reproduced with torch
// 2.11 and GCC 12 and 14). CMake therefore names libstdc++ first on the link lines of LibTorch 2.x
// builds; this check catches a process where that did not take (a GPU machine's build crashed anyway)
// and mends it by running the program again with libstdc++ preloaded.
#pragma once
#include <string>

namespace moelab {

// Path of the shared object whose std::filesystem::remove_all this process's calls reach (looked up
// the way the program's own references are), or "" when that cannot be told (a static build).
std::string filesystem_library();

// What std::filesystem had resolved to when ensure_libstdcxx_filesystem() re-executed this very
// process, or "" (also in a child that merely inherited the preload).
std::string filesystem_mended_from();

// Called first thing in main(), before any file is touched. When std::filesystem resolves outside
// libstdc++, re-executes /proc/self/exe once with libstdc++ first in LD_PRELOAD (guarded by
// MOELAB_LIBSTDCXX_REEXEC, which names the process id); when that did not help either, exits with
// a one-line error instead of crashing later. Returns normally otherwise.
void ensure_libstdcxx_filesystem(int argc, char** argv);

}  // namespace moelab
