// Upcycling: a trained dense language model turned into an MoE model whose experts start from the
// dense FFN's weights (Komatsuzaki et al. 2022's sparse upcycling; Gao et al. 2022 for MPO experts):
// the LSTM's middle layer (a dense FFN, or a one-expert ffn MoE), or each Transformer block that the
// new config makes an MoE block (moe.every). Everything else is copied; the routers start fresh.
//   ffn                 every expert a copy of the FFN
//   low_rank            every expert the rank-r truncated SVD of each matrix (U sqrt(S), sqrt(S) V^T)
//   mpo                 each matrix MPO-decomposed at the bank's bond; the central core shared, the
//                       auxiliary cores copied into every expert
//   lora, tensor_train  the FFN becomes the shared base; deltas start at zero
// Since every expert starts equal and gates sum to one over the chosen experts, the upcycled
// model computes the dense model's function up to the decomposition error.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <string>
#include <vector>

#include "moelab/config/config.h"
#include "moelab/models/lstm_language_model.h"
#include "moelab/models/language_model.h"

namespace moelab {

// A dense FFN as W_in [D, H], b_in [H], W_out [H, D], b_out [D] (detached copies).
struct DenseWeights {
  torch::Tensor w_in, b_in, w_out, b_out;
};
// Every dense FFN of a model, keyed by its parameters' prefix ("dense", a one-expert "moe",
// "blocks.3.dense"). Throws Error naming what the model has instead when there is none.
std::map<std::string, DenseWeights> dense_ffns_of(const LanguageModelImpl& model, const Config& config);
// The one dense FFN of an LSTM model (Error when there is not exactly one).
DenseWeights dense_weights_of(const LanguageModelImpl& model, const Config& config);

// The config of the upcycled model: `source` with the middle layer made an MoE of `experts`
// experts of the dense FFN's width, the given bank, and the overrides ("section.key=value") applied.
Config upcycled_config(const Config& source, int64_t experts, const std::string& bank,
                       const std::vector<std::string>& overrides);

struct UpcycleResult {
  LanguageModelPtr model;
  // Per matrix: relative_error (measured), predicted (from singular values); with several MoE
  // layers, that per layer name.
  nlohmann::json reconstruction;
};

// Builds the model `target` describes and fills it from `source` as described above.
UpcycleResult upcycle_model(const LanguageModelImpl& source, const Config& source_config, const Config& target,
                            int64_t vocab_size);

struct UpcycleRequest {
  std::string from_dir, out_dir;
  int64_t experts = 8;
  std::string bank = "ffn";
  std::vector<std::string> overrides;  // applied to the new config (moe.rank, moe.bond, moe.k, ...)
  bool force = false;                  // replace a run already in out_dir
  int64_t eval_max_tokens = 0;         // > 0: evaluate before/after on a prefix of the valid split
};

// Writes out_dir as a run at step 0 (config.toml, vocab.txt, checkpoint.pt, upcycle.json) that
// `moelab train --out out_dir --resume` continues. Returns what upcycle.json holds: the
// reconstruction errors and the valid perplexity of the source and of the upcycled model.
nlohmann::json upcycle_run(const UpcycleRequest& request);

}  // namespace moelab
