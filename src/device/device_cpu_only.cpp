// The device operations of a build against a LibTorch without CUDA: there is only the CPU.
// (src/cuda/cuda_device.cpp replaces this file in a CUDA build; CMakeLists.txt picks one.)
#include "moelab/device/device.h"

#include "moelab/util/error.h"

namespace moelab {

bool built_with_cuda() { return false; }
std::string cuda_runtime_version() { return ""; }
int cuda_device_count() { return 0; }

void synchronize_device(const torch::Device& device) {
  if (!device.is_cpu()) fail("device {} in a CPU-only build", device.str());
}

void set_current_device(const torch::Device&) {}

int cuda_capability(const torch::Device&) { return 0; }

}  // namespace moelab
