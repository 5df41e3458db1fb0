#include "moelab/device/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

// LibTorch 2.4 replaced the per-device functions (set_cpu_enabled, ...) with ones taking the device type.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool is_enabled(torch::DeviceType type) { return at::autocast::is_autocast_enabled(type); }
void set_enabled(torch::DeviceType type, bool on) { at::autocast::set_autocast_enabled(type, on); }
torch::ScalarType get_dtype(torch::DeviceType type) { return at::autocast::get_autocast_dtype(type); }
void set_dtype(torch::DeviceType type, torch::ScalarType dtype) { at::autocast::set_autocast_dtype(type, dtype); }
#else
bool is_enabled(torch::DeviceType type) {
  return type == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
void set_enabled(torch::DeviceType type, bool on) {
  if (type == torch::kCUDA) at::autocast::set_enabled(on);
  else at::autocast::set_cpu_enabled(on);
}
torch::ScalarType get_dtype(torch::DeviceType type) {
  return type == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
void set_dtype(torch::DeviceType type, torch::ScalarType dtype) {
  if (type == torch::kCUDA) at::autocast::set_autocast_gpu_dtype(dtype);
  else at::autocast::set_autocast_cpu_dtype(dtype);
}
#endif

}  // namespace

std::optional<torch::ScalarType> parse_precision(const std::string& name) {
  if (name == "float32") return std::nullopt;
  if (name == "bf16") return torch::kBFloat16;
  fail("unknown train.precision '{}' (known: float32, bf16)", name);
}

LowerPrecisionScope::LowerPrecisionScope(const torch::Device& device, std::optional<torch::ScalarType> dtype)
    : type_(device.type()) {
  if (!dtype) return;
  active_ = true;
  was_enabled_ = is_enabled(type_);
  previous_dtype_ = get_dtype(type_);
  set_enabled(type_, true);
  set_dtype(type_, *dtype);
  at::autocast::increment_nesting();
}

LowerPrecisionScope::~LowerPrecisionScope() {
  if (!active_) return;
  set_enabled(type_, was_enabled_);
  set_dtype(type_, previous_dtype_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

Float32Scope::Float32Scope(const torch::Device& device) : type_(device.type()), was_enabled_(is_enabled(type_)) {
  if (was_enabled_) set_enabled(type_, false);
}

Float32Scope::~Float32Scope() {
  if (was_enabled_) set_enabled(type_, true);
}

std::string slow_precision_warning(const torch::Device& device, std::optional<torch::ScalarType> dtype) {
  if (!device.is_cpu() || dtype != torch::kBFloat16 || detect_cpu_features().avx512_bf16) return "";
  return "warning: train.precision = bf16 on a CPU without avx512_bf16: LibTorch emulates the bf16 products, "
         "many times slower than float32 (moelab info --system)";
}

std::optional<torch::ScalarType> autocast_dtype(const torch::Device& device) {
  if (!is_enabled(device.type())) return std::nullopt;
  return get_dtype(device.type());
}

}  // namespace moelab
