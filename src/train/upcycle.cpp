#include "moelab/train/upcycle.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/experts/lora_expert_bank.h"
#include "moelab/experts/low_rank_expert_bank.h"
#include "moelab/experts/mpo_decomposition.h"
#include "moelab/experts/mpo_expert_bank.h"
#include "moelab/experts/tensor_train_expert_bank.h"
#include "moelab/models/model_from_config.h"
#include "moelab/models/transformer_language_model.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

std::string describe_middle(const Config& config) {
  if (config.get_int("moe.experts") == 0) return "no middle layer (a plain LSTM)";
  if (config.get_string("moe.layer") == "dense") return "a dense FFN";
  if (config.get_string("moe.layer") == "deep") return "a deep dense stack (moe.layer = \"deep\")";
  return fmt::format("an MoE of {} {} experts", config.get_int("moe.experts"), config.get_string("moe.bank"));
}

int64_t dense_width(const Config& config) {
  if (config.get_string("model.arch") == "transformer") return transformer_ffn_hidden(config);
  return config.get_string("moe.layer") == "dense" ? config.get_int("moe.k") * config.get_int("moe.expert_hidden")
                                                   : config.get_int("moe.expert_hidden");
}

double relative_error(const torch::Tensor& exact, const torch::Tensor& approx) {
  const double norm = exact.norm().item<double>();
  return norm > 0 ? (exact - approx).norm().item<double>() / norm : 0.0;
}

nlohmann::json error_entry(double measured, double predicted) {
  return {{"relative_error", measured}, {"predicted", predicted}};
}

// Copies `value` into every expert's slice of a stacked parameter [E, ...].
void fill_experts(torch::Tensor& stacked, const torch::Tensor& value) { stacked.copy_(value.unsqueeze(0).expand_as(stacked)); }

// Rank-r truncated SVD W ~= U V with the singular values split evenly between the factors.
nlohmann::json fill_low_rank(const torch::Tensor& w, torch::Tensor& u, torch::Tensor& v) {
  const int64_t r = u.size(2);
  const auto [left, s, right] = torch::linalg_svd(w, /*full_matrices=*/false);
  const auto root = s.narrow(0, 0, r).sqrt();
  fill_experts(u, left.narrow(1, 0, r) * root.unsqueeze(0));
  fill_experts(v, root.unsqueeze(1) * right.narrow(0, 0, r));
  const double total = s.pow(2).sum().item<double>();
  const double dropped = s.narrow(0, r, s.size(0) - r).pow(2).sum().item<double>();
  return error_entry(relative_error(w, torch::mm(u[0], v[0])), total > 0 ? std::sqrt(dropped / total) : 0.0);
}

nlohmann::json fill_mpo(const torch::Tensor& w, MpoMatrix& matrix, int64_t bond, int64_t centre) {
  const auto decomposition = mpo_decompose(w, matrix.row_factors, matrix.col_factors, bond, centre);
  for (size_t k = 0; k < matrix.cores.size(); ++k) {
    if (static_cast<int64_t>(k) == centre)
      matrix.cores[k].copy_(decomposition.cores[k]);
    else
      fill_experts(matrix.cores[k], decomposition.cores[k]);
  }
  const auto first_expert = mpo_to_matrix(matrix.cores, matrix.row_factors, matrix.col_factors)[0];
  return error_entry(relative_error(w, first_expert), decomposition.relative_error());
}

void copy_base(const DenseWeights& dense, torch::Tensor& w_in, torch::Tensor& b_in, torch::Tensor& w_out,
               torch::Tensor& b_out) {
  w_in.copy_(dense.w_in);
  b_in.copy_(dense.b_in);
  w_out.copy_(dense.w_out);
  b_out.copy_(dense.b_out);
}

// Fills the bank from the dense weights; returns the reconstruction errors per matrix.
nlohmann::json fill_bank(ExpertBank& bank, const DenseWeights& dense) {
  if (auto* ffn = dynamic_cast<FfnExpertBank*>(&bank)) {
    fill_experts(ffn->w_in, dense.w_in);
    fill_experts(ffn->b_in, dense.b_in);
    fill_experts(ffn->w_out, dense.w_out);
    fill_experts(ffn->b_out, dense.b_out);
    return {{"w_in", error_entry(0, 0)}, {"w_out", error_entry(0, 0)}};
  }
  if (auto* low_rank = dynamic_cast<LowRankExpertBank*>(&bank)) {
    fill_experts(low_rank->b_in, dense.b_in);
    fill_experts(low_rank->b_out, dense.b_out);
    return {{"w_in", fill_low_rank(dense.w_in, low_rank->u_in, low_rank->v_in)},
            {"w_out", fill_low_rank(dense.w_out, low_rank->u_out, low_rank->v_out)}};
  }
  if (auto* mpo = dynamic_cast<MpoExpertBank*>(&bank)) {
    fill_experts(mpo->b_in, dense.b_in);
    fill_experts(mpo->b_out, dense.b_out);
    return {{"w_in", fill_mpo(dense.w_in, mpo->in, mpo->options.bond(), mpo->central_index())},
            {"w_out", fill_mpo(dense.w_out, mpo->out, mpo->options.bond(), mpo->central_index())}};
  }
  if (auto* lora = dynamic_cast<LoraExpertBank*>(&bank)) {
    copy_base(dense, lora->w_in, lora->b_in, lora->w_out, lora->b_out);
    lora->lora_b_in.zero_();
    lora->lora_b_out.zero_();
    return {{"w_in", error_entry(0, 0)}, {"w_out", error_entry(0, 0)}};
  }
  if (auto* tt = dynamic_cast<TensorTrainExpertBank*>(&bank)) {
    copy_base(dense, tt->w_in, tt->b_in, tt->w_out, tt->b_out);
    tt->delta_in.b_cores.back().zero_();
    tt->delta_out.b_cores.back().zero_();
    return {{"w_in", error_entry(0, 0)}, {"w_out", error_entry(0, 0)}};
  }
  fail("moelab upcycle supports the ffn, low_rank, mpo, lora and tensor_train banks");
}

}  // namespace

namespace {

DenseWeights weights_of(const DenseFfn& dense) {
  return {dense->up->weight.t().clone(), dense->up->bias.clone(), dense->down->weight.t().clone(),
          dense->down->bias.clone()};
}

}  // namespace

std::map<std::string, DenseWeights> dense_ffns_of(const LanguageModelImpl& model, const Config& config) {
  torch::NoGradGuard no_grad;
  std::map<std::string, DenseWeights> out;
  if (const auto* transformer = dynamic_cast<const TransformerLanguageModelImpl*>(&model)) {
    for (size_t i = 0; i < transformer->blocks.size(); ++i)
      if (transformer->blocks[i]->dense) out["blocks." + std::to_string(i) + ".dense"] = weights_of(transformer->blocks[i]->dense);
    if (out.empty()) fail("upcycling needs a transformer with dense FFN blocks; every block of this one is an MoE layer");
    return out;
  }
  const auto& lstm = dynamic_cast<const LstmLanguageModelImpl&>(model);
  if (lstm.dense && lstm.dense->options.hidden_layers() == 1) return {{"dense", weights_of(lstm.dense)}};
  if (lstm.moe && lstm.moe->options.num_experts() == 1) {
    if (auto* ffn = dynamic_cast<FfnExpertBank*>(lstm.moe->experts.get()))
      return {{"moe", {ffn->w_in[0].clone(), ffn->b_in[0].clone(), ffn->w_out[0].clone(), ffn->b_out[0].clone()}}};
  }
  fail("upcycling needs a model whose middle layer is a dense FFN (moe.layer = \"dense\") or a one-expert ffn MoE; "
       "this one has {}",
       describe_middle(config));
}

DenseWeights dense_weights_of(const LanguageModelImpl& model, const Config& config) {
  const auto all = dense_ffns_of(model, config);
  if (all.size() != 1) fail("the model has {} dense FFNs; dense_weights_of wants exactly one", all.size());
  return all.begin()->second;
}

Config upcycled_config(const Config& source, int64_t experts, const std::string& bank,
                       const std::vector<std::string>& overrides) {
  if (experts < 1) fail("--experts must be >= 1, got {}", experts);
  Config config = source;
  config.set("moe.layer", ConfigValue(std::string("moe")));
  config.set("moe.experts", ConfigValue(experts));
  config.set("moe.bank", ConfigValue(bank));
  const int64_t width = dense_width(source);
  config.set("moe.expert_hidden", ConfigValue(width));
  // The Transformer's blocks that stay dense keep their width whatever moe.k becomes.
  if (source.get_string("model.arch") == "transformer") config.set("model.ffn_hidden", ConfigValue(width));
  // Two experts per token (sparse upcycling's usual choice): gates that sum to one over copies of
  // the FFN keep the dense function, and the router gets a gradient from the first step.
  config.set("moe.k", ConfigValue(std::min<int64_t>(2, experts)));
  for (const auto& assignment : overrides) config.apply_override(assignment);
  config.validate();
  if (config.get_int("moe.granularity") != 1)
    fail("upcycling copies the dense FFN into whole experts; moe.granularity = {} (fine-grained experts) is not "
         "available there",
         config.get_int("moe.granularity"));
  return config;
}

UpcycleResult upcycle_model(const LanguageModelImpl& source, const Config& source_config, const Config& target,
                            int64_t vocab_size) {
  const auto dense = dense_ffns_of(source, source_config);
  torch::manual_seed(static_cast<uint64_t>(target.get_int("train.seed")));
  UpcycleResult result;
  result.model = make_language_model(target, vocab_size);
  const auto moe_layers = result.model->moe_layers();
  if (moe_layers.empty()) fail("the upcycled config has no MoE layer");
  torch::NoGradGuard no_grad;
  // Each MoE layer starts from the dense FFN in its place: "moe" from the LSTM's "dense" (or its
  // one-expert "moe"), "blocks.i.moe" from "blocks.i.dense".
  std::vector<std::string> converted;
  nlohmann::json reconstruction = nlohmann::json::object();
  for (const auto& [name, moe] : moe_layers) {
    const std::string dense_name = name.substr(0, name.size() - 3) + "dense";
    auto found = dense.find(dense_name);
    if (found == dense.end()) found = dense.find(name);
    if (found == dense.end()) fail("the source model has no dense FFN where the upcycled one has MoE layer {}", name);
    if (moe->options.model_dim() != found->second.w_in.size(0))
      fail("the upcycled model is {} wide, the source FFN {}", moe->options.model_dim(), found->second.w_in.size(0));
    reconstruction[name] = fill_bank(*moe->experts, found->second);
    converted.push_back(found->first + ".");
  }
  auto targets = result.model->named_parameters();
  for (const auto& item : source.named_parameters()) {
    const auto& name = item.key();
    const bool replaced = std::any_of(converted.begin(), converted.end(),
                                      [&](const std::string& prefix) { return name.rfind(prefix, 0) == 0; });
    if (replaced) continue;
    auto* target_param = targets.find(name);
    if (!target_param || !target_param->sizes().equals(item.value().sizes()))
      fail("cannot copy parameter {} into the upcycled model (missing or of another shape)", name);
    target_param->copy_(item.value());
  }
  // One converted layer (the LSTM's) reports its matrices directly; several are keyed by layer.
  result.reconstruction = moe_layers.size() == 1 ? reconstruction.begin().value() : reconstruction;
  return result;
}

nlohmann::json upcycle_run(const UpcycleRequest& request) {
  auto source = load_run(request.from_dir);
  const Config config = upcycled_config(source.config, request.experts, request.bank, request.overrides);
  const RunPaths paths(request.out_dir);
  if ((checkpoint_exists(paths.checkpoint) || file_exists(paths.summary)) && !request.force)
    fail("{} already holds a run; use --force to replace it", paths.directory);
  auto upcycled = upcycle_model(*source.model, source.config, config, source.vocabulary.size());

  LoadedRun target;
  target.config = config;
  target.vocabulary = source.vocabulary;
  target.model = upcycled.model;
  target.model->eval();
  const auto before = evaluate_run_split(source, "valid", "", request.eval_max_tokens, nullptr);
  const auto after = evaluate_run_split(target, "valid", "", request.eval_max_tokens, nullptr);

  nlohmann::json report = {{"from", request.from_dir},
                           {"source_step", source.step},
                           {"bank", request.bank},
                           {"experts", request.experts},
                           {"k", config.get_int("moe.k")},
                           {"reconstruction", upcycled.reconstruction},
                           {"valid_tokens", before.tokens},
                           {"valid_ppl_source", before.perplexity},
                           {"valid_ppl_upcycled", after.perplexity},
                           {"moe", upcycled.model->moe_layers().front().layer->accounting()},
                           {"moe_layers", static_cast<int64_t>(upcycled.model->moe_layers().size())}};

  namespace fs = std::filesystem;
  fs::create_directories(paths.directory);
  for (const auto& stale : {paths.metrics, paths.summary}) fs::remove(stale);  // only reached with --force
  write_file_atomically(paths.config, config.to_toml());
  write_file_atomically(paths.vocabulary, source.vocabulary.to_text());
  save_checkpoint(paths.checkpoint, *target.model, /*optimizer=*/nullptr, LstmState(),
                  CheckpointMeta{0, config.to_toml(), source.vocabulary.to_text()});
  write_file_atomically(paths.directory + "/upcycle.json", report.dump(2) + "\n");
  return report;
}

}  // namespace moelab
