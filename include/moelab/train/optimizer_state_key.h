// The key under which a LibTorch optimizer keeps a parameter's state: the address of its TensorImpl
// as text in LibTorch 1.x, the pointer itself (void*) in 2.x. One spelling for both.
#pragma once
#include <torch/optim/optimizer.h>

#include <sstream>
#include <string>
#include <type_traits>

namespace moelab {

using OptimizerStateKey =
    typename std::decay_t<decltype(std::declval<torch::optim::Optimizer&>().state())>::key_type;

// A template only so that the branch of the other LibTorch is discarded, not compiled.
template <typename Key = OptimizerStateKey>
Key optimizer_state_key(const torch::Tensor& parameter) {
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;  // as LibTorch 1.x's c10::guts::to_string writes a pointer
    text << parameter.unsafeGetTensorImpl();
    return text.str();
  } else {
    return static_cast<Key>(parameter.unsafeGetTensorImpl());
  }
}

}  // namespace moelab
