// The device operations of a build against a CUDA LibTorch. Compiled only there (CMakeLists.txt),
// so it may include c10/cuda and the CUDA runtime directly.
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include "moelab/device/device.h"
#include "moelab/util/error.h"

namespace moelab {

bool built_with_cuda() { return true; }

std::string cuda_runtime_version() {
  return std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
}

int cuda_device_count() {
  // device_count_ensure_non_zero would throw; a machine without a driver or GPU simply has none.
  try {
    return static_cast<int>(c10::cuda::device_count());
  } catch (const std::exception&) {
    return 0;
  }
}

void synchronize_device(const torch::Device& device) {
  if (device.is_cpu()) return;
  TORCH_CHECK(device.is_cuda(), "synchronize_device: unsupported device ", device);
  c10::cuda::CUDAGuard guard(device);
  c10::cuda::device_synchronize();
}

void set_current_device(const torch::Device& device) {
  if (device.is_cuda() && device.has_index()) c10::cuda::set_device(device.index());
}

int cuda_capability(const torch::Device& device) {
  if (!device.is_cuda()) return 0;
  cudaDeviceProp properties{};
  const int index = device.has_index() ? device.index() : c10::cuda::current_device();
  if (cudaGetDeviceProperties(&properties, index) != cudaSuccess) return 0;
  return properties.major * 10 + properties.minor;
}

}  // namespace moelab
