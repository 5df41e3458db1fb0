#include "moelab/util/libstdcxx_binding.h"

#include "moelab/util/reexecute_self.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace moelab {

namespace {

// std::filesystem::remove_all(const path&): one of the functions that crashed in LibTorch's copy.
constexpr const char* kProbeSymbol = "_ZNSt10filesystem10remove_allERKNS_7__cxx114pathE";

bool is_libstdcxx(const std::string& path) { return path.find("libstdc++.so") != std::string::npos; }

// Path of the libstdc++ shared object mapped into this process, or "".
std::string loaded_libstdcxx() {
  std::string found;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        const std::string name = info->dlpi_name ? info->dlpi_name : "";
        if (!is_libstdcxx(name)) return 0;
        *static_cast<std::string*>(data) = name;
        return 1;
      },
      &found);
  return found;
}

// The guard's marker: "PID PATH", where PATH is what std::filesystem had resolved to. execv keeps the
// process id, so the marker tells the re-executed process from its children, which inherit it (and
// may have had LD_PRELOAD replaced) and get their own try.
constexpr const char* kMarker = "MOELAB_LIBSTDCXX_REEXEC";

}  // namespace

std::string filesystem_mended_from() {
  const char* marker = std::getenv(kMarker);
  if (!marker) return "";
  const std::string text = marker;
  const auto space = text.find(' ');
  if (space == std::string::npos || text.substr(0, space) != std::to_string(getpid())) return "";
  return text.substr(space + 1);
}

std::string filesystem_library() {
  // RTLD_DEFAULT searches the global scope in load order, as the executable's own relocations do.
  void* symbol = dlsym(RTLD_DEFAULT, kProbeSymbol);
  Dl_info info{};
  if (!symbol || !dladdr(symbol, &info) || !info.dli_fname) return "";
  return info.dli_fname;
}

void ensure_libstdcxx_filesystem(int argc, char** argv) {
  const auto wrong = filesystem_library();
  if (wrong.empty() || is_libstdcxx(wrong)) return;  // libstdc++'s, or a static build
  const auto libstdcxx = loaded_libstdcxx();
  if (!filesystem_mended_from().empty() || libstdcxx.empty()) {
    std::fprintf(stderr,
                 "moelab: error: std::filesystem resolves to %s, not to libstdc++%s (LibTorch's own copy "
                 "crashes on directories); start the program with LD_PRELOAD=<path of libstdc++.so.6>\n",
                 wrong.c_str(), libstdcxx.empty() ? "" : " even with libstdc++ preloaded");
    std::fflush(stderr);
    std::_Exit(1);
  }
  const char* preload = std::getenv("LD_PRELOAD");
  const std::string value = libstdcxx + (preload && *preload ? std::string(":") + preload : std::string());
  setenv("LD_PRELOAD", value.c_str(), 1);
  setenv(kMarker, (std::to_string(getpid()) + " " + wrong).c_str(), 1);  // stops a loop
  reexecute_self(argc, argv);
  std::fprintf(stderr, "moelab: error: std::filesystem resolves to %s and re-running with libstdc++ preloaded failed\n",
               wrong.c_str());
  std::_Exit(1);
}

}  // namespace moelab
