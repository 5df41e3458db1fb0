#include "moelab/train/freeze.h"

#include "moelab/util/error.h"

namespace moelab {

namespace {

bool matches(const std::string& name, const std::string& pattern) {
  if (!pattern.empty() && pattern.front() == '!') return name.find(pattern.substr(1)) == std::string::npos;
  return name.find(pattern) != std::string::npos;
}

}  // namespace

std::vector<std::string> freeze_parameters(torch::nn::Module& model, const std::vector<std::string>& patterns) {
  std::vector<std::string> frozen;
  if (patterns.empty()) return frozen;
  const auto parameters = model.named_parameters();
  for (const auto& pattern : patterns) {
    bool any = false;
    for (const auto& item : parameters) any |= matches(item.key(), pattern);
    if (!any) {
      std::string examples;
      for (size_t i = 0; i < parameters.size() && i < 4; ++i) examples += (i ? ", " : "") + parameters[i].key();
      fail("train.freeze pattern \"{}\" matches no parameter (names look like {})", pattern, examples);
    }
  }
  int64_t trainable = 0;
  for (auto& item : parameters) {
    bool freeze = false;
    for (const auto& pattern : patterns) freeze |= matches(item.key(), pattern);
    if (freeze && item.value().requires_grad()) {
      item.value().requires_grad_(false);
      frozen.push_back(item.key());
    }
    trainable += item.value().requires_grad() ? 1 : 0;
  }
  if (trainable == 0) fail("train.freeze leaves no parameter to train");
  return frozen;
}

}  // namespace moelab
