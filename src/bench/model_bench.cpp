#include "moelab/bench/model_bench.h"
#include "moelab/bench/operator_profile.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <sstream>

#include <cmath>

#include "moelab/data/lm_batches.h"
#include "moelab/device/precision.h"
#include "moelab/data/text_corpus.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/models/layer_cost.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/optimizer_factory.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/files.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

namespace {

int64_t tensor_bytes(const std::vector<torch::Tensor>& tensors) {
  int64_t bytes = 0;
  for (const auto& t : tensors)
    if (t.defined()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

// Bytes of what the optimizer keeps (momentum, moments, factored rows...): the size of its
// serialised state, which is its tensors plus a few bytes of names per entry.
int64_t optimizer_state_bytes(torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  optimizer.save(archive);
  std::ostringstream stream;
  archive.save_to(stream);
  return static_cast<int64_t>(stream.tellp());
}

// Activations one training step keeps for backward, in bytes, from the config. LSTM: per token the
// layers' gates and states (about 10 x hidden floats per layer). Transformer: per block about 12 x D
// (norms, q/k/v, attention output, residuals) plus the attention weights (heads x context) and the
// dense FFN's hidden activations. Both: the MoE layer's dispatched rows and hidden activations
// (k x (2 D + 2 H)) plus its E gate columns, the embedding, and the softmax head (the adaptive
// head's shortlist, or the full vocabulary).
int64_t activation_bytes_estimate(const Config& config, int64_t vocab) {
  const double hidden = static_cast<double>(config.get_int("model.hidden"));
  const bool transformer = config.get_string("model.arch") == "transformer";
  const bool moe = config.get_string("moe.layer") == "moe" && config.get_int("moe.experts") > 0;
  const double k = static_cast<double>(config.get_int("moe.k"));
  const double h = static_cast<double>(config.get_int("moe.expert_hidden"));
  const double moe_per_token = k * (2.0 * hidden + 2.0 * h) + 4.0 * static_cast<double>(config.get_int("moe.experts"));
  double per_token = 0;
  if (transformer) {
    const double layers = static_cast<double>(config.get_int("model.layers"));
    const double moe_layers = moe ? std::floor(layers / static_cast<double>(config.get_int("moe.every"))) : 0.0;
    const double ffn = static_cast<double>(transformer_ffn_hidden(config));
    per_token = hidden + layers * (12.0 * hidden + static_cast<double>(config.get_int("model.heads") * config.get_int("model.context"))) +
                moe_layers * moe_per_token + (layers - moe_layers) * 2.0 * ffn;
  } else {
    const double layers = static_cast<double>(config.get_int("model.layers_before") + config.get_int("model.layers_after"));
    per_token = static_cast<double>(config.get_int("model.embed")) + layers * 10.0 * hidden;
    if (moe)
      per_token += moe_per_token;
    else if (config.get_string("moe.layer") == "dense")
      per_token += 2.0 * k * h + 2.0 * hidden;
  }
  const auto cutoffs = config.get_int_list("model.adaptive_cutoffs");
  const bool adaptive = config.get_string("model.softmax") == "adaptive" && !cutoffs.empty();
  per_token += 2.0 * static_cast<double>(adaptive ? cutoffs.front() + static_cast<int64_t>(cutoffs.size()) : vocab);
  const double tokens = static_cast<double>(config.get_int("train.batch") * language_model_window(config));
  return static_cast<int64_t>(4.0 * per_token * tokens);
}

}  // namespace

nlohmann::json model_row(const std::string& case_name, const Config& config) {
  const int64_t experts = config.get_string("moe.layer") == "moe" ? config.get_int("moe.experts") : 0;
  return {{"case", case_name},
          {"arch", config.get_string("model.arch")},
          {"precision", config.get_string("train.precision")},
          {"experts", experts},
          {"k", experts > 0 ? config.get_int("moe.k") : 0},
          {"bank", experts > 0 ? config.get_string("moe.bank") : std::string("none")},
          {"router", experts > 0 ? config.get_string("moe.router") : std::string("none")},
          {"dense_ms", 0.0},
          {"ratio_vs_dense", 0.0}};
}

double training_gflops(int64_t flops_per_token, double tokens_per_s) {
  return 3.0 * static_cast<double>(flops_per_token) * tokens_per_s / 1e9;
}

std::vector<nlohmann::json> bench_language_model(const Config& config, const TimingOptions& timing,
                                                 int64_t sgemm_size, const std::string& case_prefix,
                                                 const std::string& profile_path) {
  set_grouped_path(parse_grouped_path(config.get_string("train.grouped_path")));
  const double sgemm = sgemm_gflops(sgemm_size, timing);

  VocabularyOptions vocab_options;
  vocab_options.min_count = config.get_int("data.min_count");
  vocab_options.max_size = config.get_int("data.max_vocab");
  const TextCorpus corpus = load_text_corpus(corpus_directory(config), vocab_options);
  const int64_t batch = config.get_int("train.batch"), bptt = language_model_window(config);
  const LmBatches batches(corpus.train, batch, bptt);
  const double baseline_rss = current_rss_mb();

  torch::manual_seed(static_cast<uint64_t>(config.get_int("train.seed")));
  auto model = make_language_model(config, corpus.vocabulary.size());
  auto optimizer = make_optimizer(config, *model);
  const double clip = config.get_float("train.clip");
  const int64_t flops_per_token = total_cost(model->costs()).flops;

  int64_t next_window = 0;
  LstmState state;
  const auto precision = parse_precision(config.get_string("train.precision"));
  const torch::Device cpu(torch::kCPU);
  const auto train_step = [&] {
    const auto window = batches.window(next_window++ % batches.num_windows());
    LanguageModelOutput out;
    torch::Tensor total;
    {
      const LowerPrecisionScope lower(cpu, precision);  // as the trainer does: forward and loss
      out = model->forward(window.input, state);
      total = model->loss(out.features, window.target) + out.aux_loss;
    }
    model->zero_grad(/*set_to_none=*/true);  // as the trainer does
    total.backward();
    if (clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), clip);
    optimizer->step();
    state = out.state.detached();
  };
  model->train();
  const double step_ms = median_ms(train_step, timing);
  if (!profile_path.empty())
    append_operator_profile(profile_path,
                            fmt::format("{}train_step: {} ({}, {})", case_prefix, config.get_string("model.arch"),
                                        config.get_string("moe.layer"), config.get_string("train.precision")),
                            profile_operators(train_step, /*repeats=*/3));
  const double tokens_per_step = static_cast<double>(batch * bptt);
  const double train_tokens_per_s = tokens_per_step / (step_ms / 1e3);
  const double model_gflops = training_gflops(flops_per_token, train_tokens_per_s);

  const int64_t param_bytes = tensor_bytes(model->parameters());
  int64_t grad_bytes = 0;
  for (const auto& p : model->parameters())
    if (p.requires_grad()) grad_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  const int64_t optimizer_bytes = optimizer_state_bytes(*optimizer);
  const int64_t activation_bytes = activation_bytes_estimate(config, corpus.vocabulary.size());

  model->eval();
  LstmState eval_state;
  int64_t eval_window = 0;
  const auto eval_step = [&] {
    torch::NoGradGuard no_grad;
    const LowerPrecisionScope lower(cpu, precision);
    const auto window = batches.window(eval_window++ % batches.num_windows());
    auto out = model->forward(window.input, eval_state);
    model->loss(out.features, window.target);
    eval_state = out.state;
  };
  const double eval_ms = median_ms(eval_step, timing);
  const double peak = peak_rss_mb();

  auto train = model_row(case_prefix + "train_step", config);
  train["ms"] = step_ms;
  train["tokens"] = batch * bptt;
  train["tokens_per_s"] = train_tokens_per_s;
  train["flops_per_token"] = flops_per_token;
  train["model_gflops"] = model_gflops;
  train["sgemm_gflops"] = sgemm;
  train["fraction_of_sgemm"] = model_gflops / sgemm;
  train["params_total"] = count_parameters(*model);
  constexpr double kMiB = 1024.0 * 1024.0;
  const double expected_mb = static_cast<double>(param_bytes + grad_bytes + optimizer_bytes + activation_bytes) / kMiB;
  train["params_mb"] = static_cast<double>(param_bytes) / kMiB;
  train["optimizer_state_mb"] = static_cast<double>(optimizer_bytes) / kMiB;
  train["activations_mb_estimate"] = static_cast<double>(activation_bytes) / kMiB;
  train["expected_mb"] = expected_mb;
  train["baseline_rss_mb"] = baseline_rss;
  train["peak_rss_mb"] = peak;
  // What the model added to the process (peak minus the RSS before it was built: LibTorch and the
  // corpus) relative to what its tensors account for.
  train["rss_over_expected"] = (peak - baseline_rss) / expected_mb;

  auto eval = model_row(case_prefix + "eval", config);
  eval["ms"] = eval_ms;
  eval["tokens"] = batch * bptt;
  eval["tokens_per_s"] = tokens_per_step / (eval_ms / 1e3);
  eval["peak_rss_mb"] = peak;
  // A bf16 row from a CPU without bf16 products measures LibTorch's emulation, not bf16: say so.
  if (!slow_precision_warning(cpu, precision).empty()) train["precision"] = eval["precision"] = "bf16 (emulated)";
  return {train, eval};
}

}  // namespace moelab
