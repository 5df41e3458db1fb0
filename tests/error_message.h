// What a test checks of an error: the message of the moelab::Error an action throws.
#pragma once
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "moelab/util/error.h"

namespace moelab::testing {

// The message of the moelab::Error `action` throws; a test failure (and "") when it throws none.
inline std::string error_message(const std::function<void()>& action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "no moelab::Error thrown";
  return "";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace moelab::testing
