// Choosing OpenBLAS kernels for the CPU we run on.
//
// OpenBLAS picks its kernels when the library loads, before main(). On some virtual CPUs it detects
// an old core ("Prescott", SSE3 kernels) although the CPU has AVX2 or AVX-512, and GEMMs run 5x slower
// (../shared/PERF_NOTES.md). The only remedy is OPENBLAS_CORETYPE set before the library loads, so the
// executable re-runs itself once with the variable set. A user's own setting is never overridden.
#pragma once
#include <optional>
#include <string>

namespace moelab {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512 = false;  // F + BW + DQ + VL + CD, what OpenBLAS's SkylakeX kernels need
  bool avx512_bf16 = false;  // bfloat16 dot products in hardware (Cooper Lake, Sapphire Rapids, Zen 4)
};

CpuFeatures detect_cpu_features();

// The CPU's name as /proc/cpuinfo gives it ("unknown CPU" elsewhere).
std::string cpu_model_name();

// The name and the widest vector instructions moelab's kernels use, e.g. "AMD EPYC 7B13 (AVX2)" or
// "Intel(R) Xeon(R) Processor (AVX-512, avx512_bf16)": timings only compare on alike CPUs.
std::string cpu_description();

// Name of the core OpenBLAS picked in this process, or nullopt when the loaded BLAS is not OpenBLAS.
std::optional<std::string> openblas_core_name();
std::optional<std::string> openblas_config();

// The OPENBLAS_CORETYPE to force, or nullopt when what was detected already uses the widest vector
// kernels this CPU supports. Pure function of its inputs, so it is testable on any machine.
std::optional<std::string> better_openblas_core(const CpuFeatures& cpu, const std::string& detected_core);

// Called first thing in main(). First makes sure std::filesystem is libstdc++'s
// (util/libstdcxx_binding.h; may re-execute). Then, when the variable is unset, OpenBLAS is loaded
// and it picked weaker kernels than the CPU supports, re-executes /proc/self/exe with
// OPENBLAS_CORETYPE set (once; guarded by MOELAB_BLAS_REEXEC). Also tunes glibc malloc so large
// per-step buffers are not mmap'ed and page-faulted afresh every step. Returns normally when no
// re-exec happens.
void tune_process_environment(int argc, char** argv);

// For programs that use the library without tune_process_environment(): logs one warning per process
// when OpenBLAS runs weaker kernels than the CPU supports, naming the OPENBLAS_CORETYPE to export.
// Called when an MoE layer is built.
void warn_once_if_slow_blas();

// Path of the BLAS shared object mapped into this process (from /proc/self/maps), or "".
std::string loaded_blas_library();

}  // namespace moelab
