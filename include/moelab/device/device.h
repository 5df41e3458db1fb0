// Where tensors live: parsing `train.device` / `--device`, describing the LibTorch build, and the few
// device operations that need the CUDA runtime (synchronising for timing, the GPU's capability).
// The CUDA side lives in src/cuda/ and is compiled only against a LibTorch with CUDA; a CPU-only
// LibTorch gets the fallbacks in src/device/, so no other file needs #ifdefs.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <string>

namespace moelab {

// Whether `name` is spelled "cpu", "cuda" or "cuda:N" (says nothing about what this machine has).
bool valid_device_name(const std::string& name);

// "cpu", "cuda" or "cuda:N". Throws Error with one line saying why a CUDA device cannot be used
// (no CUDA in this LibTorch, no GPU visible, index out of range) and which LibTorch this is.
torch::Device parse_device(const std::string& name, const std::string& what = "train.device");

// The device one process of a run uses for `name`: parse_device, except that plain "cuda" in a
// process with local rank r (one of several on a machine) means its own GPU, cuda:r. A CUDA device is
// made the runtime's current one.
torch::Device device_for_process(const std::string& name, int local_rank = 0,
                                 const std::string& what = "train.device");

// "LibTorch 2.15.0 with CUDA 13.0" or "LibTorch 1.13.1, CPU only".
std::string libtorch_description();

// True when this binary was compiled against a LibTorch with CUDA (whether or not a GPU is present).
bool built_with_cuda();

// The CUDA runtime version this binary was compiled with, "13.0" ("" in a CPU-only build).
std::string cuda_runtime_version();

// Number of visible GPUs (0 in a CPU-only build).
int cuda_device_count();

// Waits until every kernel queued on `device` has finished; nothing on the CPU. Timers call it
// before reading the clock, or they would measure only the kernel launches.
void synchronize_device(const torch::Device& device);

// Makes a CUDA device the current one of this thread (nothing for the CPU).
void set_current_device(const torch::Device& device);

// Compute capability (major * 10 + minor) of a CUDA device; 0 for the CPU.
int cuda_capability(const torch::Device& device);

// The device a module's parameters live on (the CPU for a module without parameters).
torch::Device module_device(const torch::nn::Module& module);

}  // namespace moelab
