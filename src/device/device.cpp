#include "moelab/device/device.h"

#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/version.h>

#include <regex>

#include "moelab/util/error.h"

namespace moelab {

bool valid_device_name(const std::string& name) {
  static const std::regex pattern("cpu|cuda(:[0-9]+)?");
  return std::regex_match(name, pattern);
}

torch::Device parse_device(const std::string& name, const std::string& what) {
  if (!valid_device_name(name)) fail("{} must be \"cpu\", \"cuda\" or \"cuda:N\", got \"{}\"", what, name);
  const torch::Device device(name);
  if (device.is_cpu()) return device;
  if (!built_with_cuda())
    fail("{} = \"{}\": this moelab was built with {}; rebuild against a CUDA LibTorch (MOELAB_TORCH=pip)", what, name,
         libtorch_description());
  const int count = cuda_device_count();
  if (count == 0) fail("{} = \"{}\": no CUDA device is available ({}, no GPU visible)", what, name, libtorch_description());
  if (device.has_index() && device.index() >= count)
    fail("{} = \"{}\": only {} CUDA device{} visible", what, name, count, count == 1 ? " is" : "s are");
  return device.has_index() ? device : torch::Device(torch::kCUDA, 0);
}

torch::Device device_for_process(const std::string& name, int local_rank, const std::string& what) {
  auto device = parse_device(name, what);
  if (device.is_cuda() && name == "cuda" && local_rank > 0) {
    if (local_rank >= cuda_device_count())
      fail("{} = \"cuda\" in the process of local rank {}: only {} CUDA devices are visible", what, local_rank,
           cuda_device_count());
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
  }
  set_current_device(device);
  return device;
}

std::string libtorch_description() {
  const std::string version = TORCH_VERSION;
  return built_with_cuda() ? "LibTorch " + version + " with CUDA " + cuda_runtime_version()
                           : "LibTorch " + version + ", CPU only";
}

torch::Device module_device(const torch::nn::Module& module) {
  for (const auto& p : module.parameters()) return p.device();
  return torch::kCPU;
}

}  // namespace moelab
