// Where moelab keeps what it makes once per user and machine (the KJV corpus, measured kernel
// choices): $XDG_CACHE_HOME/moelab, else $HOME/.cache/moelab.
#pragma once
#include <optional>
#include <string>

namespace moelab {

// nullopt when neither XDG_CACHE_HOME nor HOME is set (or both are empty).
std::optional<std::string> user_cache_dir();

}  // namespace moelab
