// `moelab info --system` and `moelab info --run RUN_DIR`.
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/version.h>

#include <cstdlib>
#include <thread>

#include "commands.h"
#include "moelab/device/device.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/libstdcxx_binding.h"
#include "moelab/util/build_commit.h"
#include "moelab/util/error.h"

namespace moelab::cli {

namespace {

struct InfoArgs {
  bool system = false;
  std::string run_dir;
  bool json = false;
};

void print_system() {
  fmt::print("build          {}\n", libtorch_description());
  fmt::print("moelab commit  {}\n", build_commit());
  const int gpus = cuda_device_count();
  fmt::print("CUDA devices   {}{}\n", gpus,
             gpus > 0 ? fmt::format(" (cuda:0 compute capability {})", cuda_capability(torch::Device(torch::kCUDA, 0)))
                      : std::string(built_with_cuda() ? " (no GPU visible)" : " (CPU-only build)"));
  const auto filesystem = filesystem_library();
  const auto mended_from = filesystem_mended_from();
  fmt::print("filesystem     {}{}\n", filesystem.empty() ? "(not found)" : filesystem,
             mended_from.empty() ? std::string() : fmt::format(" (preloaded by moelab; it had resolved to {})", mended_from));
  fmt::print("threads        {} intra-op (set per run by train.threads; {} cores)\n", at::get_num_threads(),
             std::thread::hardware_concurrency());
  const auto blas_path = loaded_blas_library();
  fmt::print("BLAS library   {}\n", blas_path.empty() ? "(none found in /proc/self/maps)" : blas_path);
  const auto core = openblas_core_name();
  const auto cpu = detect_cpu_features();
  fmt::print("CPU            {}\n", cpu_description());
  fmt::print("CPU features   avx2={} fma={} avx512={} avx512_bf16={} (bf16 products {})\n", cpu.avx2, cpu.fma,
             cpu.avx512, cpu.avx512_bf16, cpu.avx512_bf16 ? "in hardware" : "emulated: slower than float32");
  if (core) {
    fmt::print("OpenBLAS       {}\n", openblas_config().value_or("?"));
    const char* forced = std::getenv("OPENBLAS_CORETYPE");
    const char* detected = std::getenv("MOELAB_BLAS_REEXEC");
    fmt::print("core type      {}{}\n", *core,
               detected ? fmt::format(" (set by moelab; OpenBLAS had detected {})", detected)
                        : (forced ? " (OPENBLAS_CORETYPE set by the user)" : " (detected by OpenBLAS)"));
  } else {
    fmt::print("OpenBLAS       not loaded\n");
    // Debian's reference BLAS lives in .../blas/libblas.so.3; OpenBLAS variants in .../openblas-*/.
    if (blas_path.find("/blas/") != std::string::npos)
      fmt::print("warning: this is the reference BLAS: matrix products run many times slower; "
                 "apt-get install libopenblas0-openmp\n");
  }
}

}  // namespace

void add_info_command(CLI::App& app) {
  auto args = std::make_shared<InfoArgs>();
  auto* cmd = app.add_subcommand("info", "System facts, or a run's parameters and FLOPs per layer");
  cmd->add_flag("--system", args->system, "LibTorch version, threads, BLAS in use");
  cmd->add_option("--run", args->run_dir, "Run directory: parameters total/active and FLOPs per token, per layer");
  cmd->add_flag("--json", args->json, "With --run: print JSON");
  cmd->callback([args] {
    if (!args->system && args->run_dir.empty()) fail("info needs --system or --run RUN_DIR");
    if (args->system) print_system();
    if (!args->run_dir.empty()) {
      auto run = load_run(args->run_dir);
      const auto costs = run.model->costs();
      const auto moe_layers = run.model->moe_layers();
      // Every MoE layer of a model has the same router and bank: the first speaks for all.
      const auto moe = moe_layers.empty() ? nlohmann::json() : moe_layers.front().layer->accounting();
      if (args->json) {
        auto out = cost_to_json(costs);
        out["moe_layers"] = nlohmann::json::array();
        for (const auto& [name, layer] : moe_layers) {
          auto entry = layer->accounting();
          entry["name"] = name;
          out["moe_layers"].push_back(entry);
        }
        fmt::print("{}\n", out.dump(2));
      } else {
        fmt::print("run {} (step {}, vocabulary {})\n{}", args->run_dir, run.step, run.vocabulary.size(),
                   cost_table(costs));
        if (!moe.is_null())
          fmt::print("moe: router {}, bank {}, {} experts: {} parameters ({} shared, {} unique per expert), "
                     "{} active per token, {:.2f}x fewer parameters than ffn experts\n",
                     moe["router"].get<std::string>(), moe["bank"].get<std::string>(), moe["experts"].get<int64_t>(),
                     moe["params_total"].get<int64_t>(), moe["params_shared"].get<int64_t>(),
                     moe["params_per_expert_unique"].get<int64_t>(), moe["params_active_per_token"].get<int64_t>(),
                     moe["compression_vs_ffn"].get<double>());
        if (!moe.is_null() && moe["flops_per_forward"].get<int64_t>() > 0)
          fmt::print("moe: {} FLOPs per token, plus {} FLOPs per forward call to contract factorised weights\n",
                     moe["flops_per_token"].get<int64_t>(), moe["flops_per_forward"].get<int64_t>());
      }
    }
  });
}

}  // namespace moelab::cli
