// The one error type moelab throws for bad input: its message is a single line a user can act on.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace moelab {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// The first line of an exception's message, without the backtrace LibTorch's c10::Error carries:
// what a one-line error can quote of an exception from LibTorch or elsewhere.
std::string first_line(const std::exception& error);

// fail("k = {} exceeds experts = {}", k, e): throws Error with the formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace moelab
