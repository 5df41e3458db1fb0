#include "moelab/util/blas_env.h"

#include "moelab/util/libstdcxx_binding.h"
#include "moelab/util/reexecute_self.h"

#include <cpuid.h>
#include <dlfcn.h>
#include <malloc.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <vector>

namespace moelab {

CpuFeatures detect_cpu_features() {
  CpuFeatures features;
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return features;
  const bool fma = ecx & (1u << 12);
  const bool osxsave = ecx & (1u << 27);
  const bool avx = ecx & (1u << 28);
  if (!osxsave || !avx) return features;
  // The OS must save the wide registers too (XCR0), or the instructions fault.
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_saved = (xcr0_lo & 0x6) == 0x6;
  const bool zmm_saved = (xcr0_lo & 0xe6) == 0xe6;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return features;
  features.fma = fma && ymm_saved;
  features.avx2 = ymm_saved && (ebx & (1u << 5));
  const unsigned avx512_bits = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);  // F DQ CD BW VL
  features.avx512 = zmm_saved && (ebx & avx512_bits) == avx512_bits;
  if (features.avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) features.avx512_bf16 = eax & (1u << 5);
#endif
  return features;
}

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      const auto name = colon == std::string::npos ? colon : line.find_first_not_of(" \t", colon + 1);
      if (name != std::string::npos) return line.substr(name);
    }
  return "unknown CPU";
}

std::string cpu_description() {
  const auto cpu = detect_cpu_features();
  const char* vectors = cpu.avx512_bf16 ? "AVX-512, avx512_bf16" : cpu.avx512 ? "AVX-512" : cpu.avx2 ? "AVX2" : "no AVX2";
  return cpu_model_name() + " (" + vectors + ")";
}

std::optional<std::string> openblas_core_name() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  if (!fn) return std::nullopt;
  return std::string(fn());
}

std::optional<std::string> openblas_config() {
  using Fn = char* (*)();
  auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
  if (!fn) return std::nullopt;
  return std::string(fn());
}

namespace {

// 2 = AVX-512 kernels, 1 = AVX2/FMA kernels, 0 = older. Names as openblas_get_corename() reports them
// (lower case in 0.3.x).
int kernel_tier(std::string core) {
  for (auto& c : core) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  static const std::vector<std::string> tier2 = {"skylakex", "cooperlake", "sapphirerapids"};
  static const std::vector<std::string> tier1 = {"haswell", "zen", "skylake", "broadwell"};
  for (const auto& name : tier2)
    if (core == name) return 2;
  for (const auto& name : tier1)
    if (core == name) return 1;
  return 0;
}

}  // namespace

std::optional<std::string> better_openblas_core(const CpuFeatures& cpu, const std::string& detected_core) {
  const int cpu_tier = cpu.avx512 ? 2 : (cpu.avx2 && cpu.fma ? 1 : 0);
  if (kernel_tier(detected_core) >= cpu_tier) return std::nullopt;
  return cpu_tier == 2 ? std::string("SkylakeX") : std::string("Haswell");
}

void tune_process_environment(int argc, char** argv) {
  ensure_libstdcxx_filesystem(argc, argv);  // before any file is touched; may re-execute
  // Keep large tensors on the heap between steps. An mmap'ed buffer is page-faulted afresh every
  // step (PERF_NOTES: ~20% of an LSTM step); glibc caps the mmap threshold at 32 MiB, and a 64-expert
  // weight gradient is 134 MB, so mmap is turned off for the heap (it remains the fallback when the
  // heap cannot grow). Measured: E = 64, k = 1 layer fwd+bwd 449 -> 279 ms (NOTES.md).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  // Never give the heap's top back to the system: with 256 experts each weight gradient is 537 MB,
  // and a trim threshold below that returned and re-faulted it every step (E = 256, k = 1 layer:
  // 915 ms, most of it kernel time). -1 reads as SIZE_MAX: trimming off.
  mallopt(M_TRIM_THRESHOLD, -1);
  mallopt(M_TOP_PAD, 64 << 20);
  // oneDNN keeps a compiled primitive (JIT code and buffers, ~0.6 MB) per matrix-product shape, 1,024
  // of them by default. LibTorch sends bf16 products to oneDNN, and bf16 expert blocks have a new row
  // count at nearly every call, so the cache filled with shapes never seen again: peak RSS 1.70 GB
  // against 1.05 GB with 64 entries after 60 bf16 steps of kjv-transformer-switch (float32 expert
  // products use oneDNN's sgemm, which caches nothing; the dense Transformer did not grow). 64 keeps
  // the fixed shapes (attention, dense FFNs, output layer). It did cost bf16 expert products their
  // speed (E = 64, k = 2 layer: 135.9 ms against 104.1 with 1,024 entries), so where oneDNN exports
  // dnnl_gemm_bf16bf16f32 they no longer go through primitives (grouped_matmul.cpp); where it does
  // not (the pip wheel) they still do. A value the user exported, under either of oneDNN's names, wins.
  if (!std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY")) setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64", /*overwrite=*/0);

  if (std::getenv("OPENBLAS_CORETYPE") || std::getenv("MOELAB_BLAS_REEXEC")) return;
  const auto core = openblas_core_name();
  if (!core) return;
  const auto better = better_openblas_core(detect_cpu_features(), *core);
  if (!better) return;
  setenv("OPENBLAS_CORETYPE", better->c_str(), 1);
  setenv("MOELAB_BLAS_REEXEC", core->c_str(), 1);  // remembers what was detected, and stops a loop
  reexecute_self(argc, argv);
  // Only returns on failure: carry on with the slower kernels.
  unsetenv("OPENBLAS_CORETYPE");
}

void warn_once_if_slow_blas() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (std::getenv("OPENBLAS_CORETYPE")) return;
    const auto core = openblas_core_name();
    if (!core) return;
    if (const auto better = better_openblas_core(detect_cpu_features(), *core))
      spdlog::warn("OpenBLAS runs its '{}' kernels but this CPU supports '{}' (about 5x faster matrix products): "
                   "export OPENBLAS_CORETYPE={} before starting, or call moelab::tune_process_environment(argc, argv) "
                   "first in main()",
                   *core, *better, *better);
  });
}

std::string loaded_blas_library() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const auto base = path.substr(path.rfind('/') + 1);
    if (base.rfind("libblas", 0) == 0 || base.rfind("libopenblas", 0) == 0 || base.rfind("libmkl", 0) == 0)
      return path;
  }
  return "";
}

}  // namespace moelab
