#include "moelab/util/user_cache_dir.h"

#include <cstdlib>
#include <filesystem>

namespace moelab {

std::optional<std::string> user_cache_dir() {
  namespace fs = std::filesystem;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0')
    return (fs::path(xdg) / "moelab").string();
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0')
    return (fs::path(home) / ".cache" / "moelab").string();
  return std::nullopt;
}

}  // namespace moelab
