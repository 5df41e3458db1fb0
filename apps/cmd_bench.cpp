// `moelab bench [--quick] [--only SECTIONS] [--json FILE] [--samples N] [--config FILE --set k=v]`
// The ratio report of `moelab bench` (README): every row measured in this process, warm-up then median.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include "commands.h"
#include "moelab/bench/bench_suite.h"
#include "moelab/bench/dist_bench.h"
#include "moelab/device/device.h"
#include "moelab/train/distributed_run.h"
#include "moelab/train/run_session.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab::cli {

namespace {

struct BenchArgs {
  bool quick = false;
  std::vector<int64_t> layer_experts, layer_k;
  std::string only;
  std::string transformer_config_file;
  std::vector<std::string> task_config_files, task_overrides;
  std::string json_file;
  int samples = 10;
  int warmup = 2;
  int threads = 0;
  std::string device = "cpu";
  std::string dtype = "float32";
  std::string path = "auto";
  std::string profile_file;
  std::string config_file;
  std::vector<std::string> overrides;
  int64_t tokens = 2048, dim = 512, hidden = 1024;
  bool dist = false;
  int64_t dist_steps = 20;
};

// `moelab bench --dist`: the distributed step report (see dist_bench.h), printed by rank 0.
void run_dist_section(const BenchArgs& args, const std::string& config_file) {
  DistBenchOptions options;
  options.config = config_file.empty() ? Config::defaults() : Config::from_toml_file(config_file);
  options.config.apply_override("moe.parallel=expert");
  for (const auto& assignment : args.overrides) options.config.apply_override(assignment);
  // The bench's own --path and --threads win over the config's train.* keys.
  options.config.apply_override("train.grouped_path=" + args.path);
  options.config.apply_override("train.threads=" + std::to_string(args.threads));
  options.steps = args.dist_steps;
  options.warmup = std::max(1, args.warmup);
  DistributedRun run(options.config);
  apply_compute_settings(options.config, run.launch().local_world_size);
  const auto result = run_dist_bench(options, run.communicator());
  if (!run.lead()) return;
  fmt::print("# moelab bench --dist\n\nLibTorch {}, BLAS {}, model from {}\n", TORCH_VERSION, loaded_blas_library(),
             config_file.empty() ? std::string("the defaults") : config_file);
  fmt::print("{}", dist_bench_markdown(result));
  if (!args.json_file.empty()) {
    write_file_atomically(args.json_file, result.dump(2) + "\n");
    fmt::print("\nwrote {}\n", args.json_file);
  }
}

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, ','))
    if (!part.empty()) parts.push_back(part);
  return parts;
}

std::string machine_line(const LayerBenchOptions& layer) {
  const auto core = openblas_core_name();
  return fmt::format("{}, {} threads of {} cores, BLAS {}{}, device {}{}, {}", libtorch_description(),
                     at::get_num_threads(), std::thread::hardware_concurrency(), loaded_blas_library(),
                     core ? fmt::format(" (OpenBLAS core {})", *core) : std::string(), layer.device.str(),
                     layer.device.is_cuda() ? fmt::format(" (compute capability {})", cuda_capability(layer.device))
                                            : std::string(),
                     layer.dtype == torch::kBFloat16 ? "bf16" : "float32");
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto* cmd = app.add_subcommand("bench", "Measure the MoE layer and the model against dense baselines (markdown + JSON)");
  cmd->add_flag("--quick", args->quick, "Only the layer rows with E <= 64 (about two minutes on 2 cores)");
  cmd->add_option("--experts", args->layer_experts, "Expert counts of the layer rows (default 8 64 256 1024)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--k", args->layer_k, "Experts per token of the layer rows (default 1 2 4)")->check(CLI::PositiveNumber);
  cmd->add_option("--only", args->only, fmt::format("Comma-separated sections: {}", fmt::join(bench_section_names(), ", ")));
  cmd->add_option("--transformer-config", args->transformer_config_file,
                  "Transformer of the transformer section (default configs/kjv-transformer-switch.toml when present)");
  cmd->add_option("--task-config", args->task_config_files,
                  "A run config of any task (translation, tagging, QA, LM) whose training step the task section "
                  "times as moelab train runs it (repeatable; the section runs only when given)");
  cmd->add_option("--task-set", args->task_overrides, "Override a config key of every --task-config (repeatable)");
  cmd->add_option("--json", args->json_file, "Write the rows as a JSON list to this file");
  cmd->add_option("--samples", args->samples, "Timed samples per measurement (median reported)")->check(CLI::PositiveNumber);
  cmd->add_option("--warmup", args->warmup, "Untimed calls before sampling")->check(CLI::NonNegativeNumber);
  cmd->add_option("--threads", args->threads, "Intra-op threads (0 = all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args->device, "cpu, cuda or cuda:N (layer, banks, slow_paths and weak_scaling rows)")
      ->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "float32 or bf16: weights and activations of the layer rows")
      ->check(CLI::IsMember({"float32", "bf16"}))
      ->capture_default_str();
  cmd->add_option("--path", args->path,
                  fmt::format("Grouped product path: {}", fmt::join(grouped_path_names(), ", ")));
  cmd->add_option("--profile", args->profile_file,
                  "Profile three MoE samples of each layer row and three training steps of each model row "
                  "operator by operator (host time: on a GPU, long operators are the ones that wait for it) and "
                  "write the tables to this markdown file");
  cmd->add_option("--config", args->config_file, "Language model of the model section (default configs/kjv-moe.toml when present)");
  cmd->add_option("--set", args->overrides, "Override a config key of the model section (repeatable)");
  cmd->add_option("--tokens", args->tokens, "Tokens per layer sample")->check(CLI::PositiveNumber);
  cmd->add_option("--dim", args->dim, "Layer width D")->check(CLI::PositiveNumber);
  cmd->add_option("--hidden", args->hidden, "Expert hidden width H")->check(CLI::PositiveNumber);
  cmd->add_flag("--dist", args->dist,
                "Under a launcher (torchrun --no-python --nproc_per_node=W moelab bench --dist): expert-parallel training "
                "steps of the --config model, with all-to-all, all-reduce and expert compute per rank");
  cmd->add_option("--steps", args->dist_steps, "--dist: timed training steps")->check(CLI::PositiveNumber);
  cmd->callback([args] {
    const std::string config_file =
        !args->config_file.empty() ? args->config_file : (file_exists("configs/kjv-moe.toml") ? "configs/kjv-moe.toml" : "");
    if (args->dist) return run_dist_section(*args, config_file);
    at::set_num_threads(args->threads > 0 ? args->threads : static_cast<int>(std::thread::hardware_concurrency()));
    set_grouped_path(parse_grouped_path(args->path));
    BenchRequest request;
    request.quick = args->quick;
    request.layer_experts = args->layer_experts;
    request.layer_k = args->layer_k;
    request.sections = split_commas(args->only);
    request.layer.tokens = args->tokens;
    request.layer.dim = args->dim;
    request.layer.expert_hidden = args->hidden;
    request.layer.timing.samples = args->samples;
    request.layer.timing.warmup = args->warmup;
    request.layer.device = device_for_process(args->device, /*local_rank=*/0, "--device");
    request.layer.dtype = args->dtype == "bf16" ? torch::kBFloat16 : torch::kFloat;
    request.layer.profile_path = args->profile_file;
    request.model_config = config_file.empty() ? Config::defaults() : Config::from_toml_file(config_file);
    for (const auto& assignment : args->overrides) request.model_config.apply_override(assignment);
    // The bench's own --path and --threads win over the config's train.* keys.
    request.model_config.apply_override("train.grouped_path=" + args->path);
    const std::string transformer_file = args->transformer_config_file.empty() && file_exists("configs/kjv-transformer-switch.toml")
                                             ? "configs/kjv-transformer-switch.toml"
                                             : args->transformer_config_file;
    if (!transformer_file.empty()) {
      request.transformer_config = Config::from_toml_file(transformer_file);
      request.transformer_config->apply_override("train.grouped_path=" + args->path);
    }
    for (const auto& file : args->task_config_files) {
      auto config = Config::from_toml_file(file);
      for (const auto& assignment : args->task_overrides) config.apply_override(assignment);
      config.apply_override("train.grouped_path=" + args->path);
      config.validate();
      request.task_configs.push_back(config);
    }
    if (std::find(request.sections.begin(), request.sections.end(), "task") != request.sections.end() &&
        request.task_configs.empty())
      fail("the task section needs a config to measure: --task-config FILE");
    request.progress = [](const std::string& what) { fmt::print(stderr, "bench: {}\n", what); };
    if (!args->json_file.empty())
      request.on_row = [file = args->json_file](const std::vector<nlohmann::json>& rows) {
        write_file_atomically(file, nlohmann::json(rows).dump(2) + "\n");
      };

    check_bench_request(request);
    fmt::print("# moelab bench\n\n{}\n", machine_line(request.layer));
    // Rows append their tables; the file starts afresh with the machine it was measured on.
    if (!args->profile_file.empty())
      write_file_atomically(args->profile_file, fmt::format("# moelab bench --profile\n\n{}\n", machine_line(request.layer)));
    fmt::print("layer shape: {} tokens, D = {}, H = {}; grouped path {}; warm-up {}, median of {} samples\n",
               args->tokens, args->dim, args->hidden, args->path, args->warmup, args->samples);
    if (!config_file.empty()) fmt::print("model section: {}\n", config_file);
    const auto result = run_bench(request);
    fmt::print("{}", result.markdown);
    if (!args->json_file.empty()) fmt::print("\nwrote {}\n", args->json_file);
  });
}

}  // namespace moelab::cli
