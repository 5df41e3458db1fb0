// The sparsely-gated Mixture-of-Experts layer: router -> dispatch -> expert bank -> combine.
//   y = sum_{e in TopK(x)} G(x)_e * E_e(x)            (Shazeer et al. 2017, eq. 1)
// Applied to a flat batch of tokens; a sequence model flattens [T, B, D] to [T*B, D] first, so the
// experts see every position of the batch at once (the paper's "convolutional" application).
//
// Shape legend: N tokens, D model width, E experts, K slots, H expert hidden width.
#pragma once
#include <torch/arg.h>
#include <torch/nn/pimpl.h>

#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "moelab/experts/expert_bank.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/balance/balance_losses.h"
#include "moelab/dispatch/dispatch_plan.h"
#include "moelab/dist/expert_exchange.h"
#include "moelab/routing/router_options.h"
#include "moelab/routing/soft_slots.h"
#include "moelab/types/sequence_layout.h"

namespace moelab {

struct MoELayerOptions {
  MoELayerOptions(int64_t model_dim, int64_t num_experts, int64_t k, int64_t expert_hidden)
      : model_dim_(model_dim), num_experts_(num_experts), k_(k), expert_hidden_(expert_hidden) {}
  /// Width D of the token features.
  TORCH_ARG(int64_t, model_dim);
  /// Number of experts E.
  TORCH_ARG(int64_t, num_experts);
  /// Experts per token K.
  TORCH_ARG(int64_t, k);
  /// Hidden width H of each FFN expert.
  TORCH_ARG(int64_t, expert_hidden);
  /// Router name; see make_router() for the list, plus kSoftRouter (Soft MoE, see routing/soft_slots.h).
  TORCH_ARG(std::string, router) = "noisy_topk";
  /// Soft MoE: slots per expert p.
  TORCH_ARG(int64_t, soft_slots) = 1;
  /// Expert bank name; see expert_bank_names().
  TORCH_ARG(std::string, bank) = "ffn";
  /// low_rank, shared_projection, lora and tensor_train banks: rank r of the factorised matrices / deltas.
  TORCH_ARG(int64_t, rank) = 16;
  /// lora and tensor_train banks: keep the shared base FFN fixed.
  TORCH_ARG(bool, freeze_base) = false;
  /// mpo and tensor_train banks: factors of D and of H, one per core.
  TORCH_ARG(std::vector<int64_t>, model_factors) = {};
  TORCH_ARG(std::vector<int64_t>, hidden_factors) = {};
  /// mpo bank: largest bond dimension.
  TORCH_ARG(int64_t, bond) = 16;
  /// mpo bank: fraction of steps in which the shared central cores are updated (gradient mask).
  TORCH_ARG(double, central_update_p) = 1.0;
  /// Always-active shared experts added to the routed ones (DeepSeekMoE): one dense FFN of width
  /// shared_experts * expert_hidden that every token uses with weight 1. 0 = none.
  TORCH_ARG(int64_t, shared_experts) = 0;
  /// Dropout on the experts' hidden activations while training (ffn bank and shared experts).
  TORCH_ARG(double, expert_dropout) = 0.0;
  /// Expert capacity as a multiple of the even share N*K/E; <= 0 means dropless. For the
  /// expert_choice router it sets the tokens each expert takes instead.
  TORCH_ARG(double, capacity_factor) = 0.0;
  /// Capacity in evaluation; < 0 means the same as capacity_factor.
  TORCH_ARG(double, eval_capacity_factor) = -1.0;
  /// Which slots an over-full expert keeps.
  TORCH_ARG(DropPolicy, capacity_drop) = DropPolicy::kPosition;
  /// A causal model (language model): evaluation keeps every token's routing independent of later
  /// tokens. Over-full experts then drop in token order (DropPolicy::kToken) whatever capacity_drop
  /// says, and expert choice becomes per-token (see ExpertChoiceRouter).
  TORCH_ARG(bool, causal) = false;
  /// Noisy routers: add trainable noise while training.
  TORCH_ARG(bool, noisy) = true;
  /// Noisy routers: floor added to the noise standard deviation.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// Router input jitter: multiply by U(1 - jitter, 1 + jitter) while training (Switch); 0 = off.
  TORCH_ARG(double, jitter) = 0.0;
  /// What the router reads: "none", the layer's input as it is, or "rms", that input divided by its
  /// root mean square over the features (no parameters; the experts still read the raw input). An
  /// Adam-trained router's logits move in proportion to its input's scale, and an LSTM's output can
  /// sit far below the unit scale a Transformer's layer norm gives its routers.
  TORCH_ARG(std::string, router_norm) = "none";
  /// Aux-loss-free router: affinity function, gate scale, bias step (see RouterOptions).
  TORCH_ARG(std::string, affinity) = "sigmoid";
  TORCH_ARG(double, route_scale) = 1.0;
  TORCH_ARG(double, bias_update_rate) = 1e-3;
  /// Hierarchical router: groups and groups chosen per token; aux_free and group_limited: groups
  /// and the groups a token's experts may come from.
  TORCH_ARG(int64_t, groups) = 1;
  TORCH_ARG(int64_t, group_k) = 1;
  /// ReLU router: initial L1 coefficient and its per-step factor (see ReluRouter).
  TORCH_ARG(double, relu_l1_init) = 1e-8;
  TORCH_ARG(double, relu_l1_rate) = 1.2;
  /// Null experts (adaptive computation; Zeng et al. 2024, AdaMoE): the router chooses among
  /// num_experts + null_experts experts, and a slot on a null expert costs nothing and adds zero, so a
  /// token may use fewer than k real experts. The balancing losses see all of them.
  TORCH_ARG(int64_t, null_experts) = 0;
  /// Expert parallelism: the group the experts are split over (E/W per rank, see
  /// dist/expert_exchange.h); null keeps every expert in this process.
  TORCH_ARG(std::shared_ptr<Communicator>, expert_group) = nullptr;
  /// Weights of the balancing losses (importance, load, switch, z).
  TORCH_ARG(BalanceWeights, balance) = (BalanceWeights{0.1, 0.1, 0.0, 0.0});
  /// Global-batch balancing (Qiu et al. 2025): while training, the importance, load and switch
  /// losses read expert sums pooled over every rank of balance_group and every micro-batch of the
  /// step so far (see start_step), instead of this batch's alone. Evaluation stays per batch.
  TORCH_ARG(bool, global_balance) = false;
  TORCH_ARG(std::shared_ptr<Communicator>, balance_group) = nullptr;
};

struct MoEOutput {
  torch::Tensor output;    // [N, D]
  torch::Tensor aux_loss;  // scalar, weighted balancing losses
  std::map<std::string, torch::Tensor> loss_terms;
  RoutingStats stats;
};

// Throws moelab::Error for an unknown name or invalid sizes.
std::shared_ptr<Router> make_router(const MoELayerOptions& options);
// `first_expert`: the global id of the bank's expert 0 when it holds one rank's share of the experts.
std::shared_ptr<ExpertBank> make_expert_bank(const MoELayerOptions& options, int64_t first_expert = 0);
const std::vector<std::string>& expert_bank_names();

class MoELayerImpl : public torch::nn::Module {
 public:
  explicit MoELayerImpl(const MoELayerOptions& options);
  void reset();

  // x: [N, D]; token_ids: [N] int64, needed only by the hash router; layout: where the N rows sit
  // in their sequences, needed by Soft MoE and the sequence-level balance loss (undefined: none).
  MoEOutput forward(const torch::Tensor& x, const torch::Tensor& token_ids = {}, const SequenceLayout& layout = {});

  // Global-batch balancing with gradient accumulation: a training step of `micro_batches` forward
  // passes begins. Each pass's balancing losses then read the sums of this step's passes so far
  // (the paper's buffer: the last pass sees the whole step). Without a call, passes are not pooled.
  void start_step(int64_t micro_batches);

  // Counted for the whole layer, all ranks' experts included.
  int64_t params_total() const;
  int64_t bank_params_total() const;        // the expert bank's, all ranks' experts included
  int64_t params_active_per_token() const;  // router + the experts a token uses on average
  int64_t flops_per_token() const;          // router + the experts a token uses on average, inference
  // Expert passes per token the static figures above assume (Soft MoE: one, see the .cpp).
  double nominal_experts_per_token() const;
  // The same at a measured mean of real experts per token (relu routing and null experts vary it).
  int64_t flops_per_token_at(double experts_per_token) const;
  // Parameter accounting of the expert bank: params_total, params_shared, params_per_expert_unique,
  // params_active_per_token, flops_per_token (layer, router included), compression_vs_ffn (parameters
  // of plain ffn experts of the same d, h, E divided by this bank's).
  nlohmann::json accounting() const;
  void pretty_print(std::ostream& stream) const override;

  MoELayerOptions options;
  // Exactly one of the two: a token-choice (or expert-choice) router, or Soft MoE's slots.
  std::shared_ptr<Router> router;
  std::shared_ptr<SoftSlots> soft;
  // Under expert parallelism, only this rank's experts (exchange->first_expert() onwards).
  std::shared_ptr<ExpertBank> experts;
  std::shared_ptr<ExpertExchange> exchange;  // set under expert parallelism
  DenseFfn shared{nullptr};  // the shared experts, when options.shared_experts > 0
  // Called with every routing the layer computes (real experts only, before capacity) and the token
  // ids it was given (undefined if none), for analyses such as `moelab routes --top-tokens`.
  std::function<void(const Routing&, const torch::Tensor& token_ids)> routing_observer;

 private:
  void check_soft_options() const;
  MoEOutput forward_soft(const torch::Tensor& x, const SequenceLayout& layout);
  // The balancing losses of `routed`: this batch's own, or pooled over the global batch.
  BalanceResult balance(const Routing& routed, const torch::Tensor& x, const SequenceLayout& layout);
  // Global-batch balancing: this step's pooled sums so far, and its micro-batch count.
  BalanceSums step_pool_;
  int64_t micro_batches_ = 1;
};
TORCH_MODULE(MoELayer);

// An MoE layer with its place in a model (the prefix of its parameters' names), for summaries,
// optimizer groups and parameter placement over models with several MoE layers.
struct NamedMoELayer {
  std::string name;
  MoELayer layer;
};

}  // namespace moelab
