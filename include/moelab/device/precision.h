// Selective precision (Switch Transformer, ST-MoE): inside a LowerPrecisionScope the matrix
// products run in bfloat16 through LibTorch's autocast, while a Float32Scope (the router, the
// balancing losses, the softmax output layer) turns it off again. Parameters, their gradients and
// the optimizer state stay float32 (autocast casts a weight per use; the cast's gradient lands on
// the float32 master). Works against LibTorch 1.13 and 2.x, on the CPU and CUDA.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>

namespace moelab {

// "float32" or "bf16"; throws Error otherwise.
std::optional<torch::ScalarType> parse_precision(const std::string& name);

// Autocast to `dtype` on `device`'s type for the scope's lifetime (nothing when dtype is empty).
// Leaving the outermost scope drops autocast's cached weight casts, so the next step casts the
// weights the optimizer has just updated.
class LowerPrecisionScope {
 public:
  LowerPrecisionScope(const torch::Device& device, std::optional<torch::ScalarType> dtype);
  ~LowerPrecisionScope();
  LowerPrecisionScope(const LowerPrecisionScope&) = delete;
  LowerPrecisionScope& operator=(const LowerPrecisionScope&) = delete;

 private:
  torch::DeviceType type_;
  bool active_ = false, was_enabled_ = false;
  torch::ScalarType previous_dtype_ = torch::kFloat32;
};

// Autocast off for the scope's lifetime on `device`'s type (restored after).
class Float32Scope {
 public:
  explicit Float32Scope(const torch::Device& device);
  ~Float32Scope();
  Float32Scope(const Float32Scope&) = delete;
  Float32Scope& operator=(const Float32Scope&) = delete;

 private:
  torch::DeviceType type_;
  bool was_enabled_;
};

// A one-line warning when `dtype` has no hardware products on `device` (bf16 on a CPU without
// avx512_bf16, where LibTorch's emulated bf16 products run many times slower than float32), else "".
std::string slow_precision_warning(const torch::Device& device, std::optional<torch::ScalarType> dtype);

// The dtype autocast casts matrix products to on `device` now, if it is on.
std::optional<torch::ScalarType> autocast_dtype(const torch::Device& device);

}  // namespace moelab
