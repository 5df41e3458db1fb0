// Leading and trailing blanks (spaces, tabs, line ends) off a piece of user text.
#pragma once
#include <string>

namespace moelab {

inline std::string trim(const std::string& s) {
  const auto begin = s.find_first_not_of(" \t\r\n");
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(" \t\r\n") - begin + 1);
}

}  // namespace moelab
