// Soft MoE's routing (Puigcerver et al. 2023, "From Sparse to Soft Mixtures of Experts"): no token
// is sent anywhere. Each expert owns p slots; a slot's input is a weighted average of all the tokens
// of one sequence (dispatch weights: a softmax over the sequence's tokens, per slot), and a token's
// output is a weighted average of every slot's output (combine weights: a softmax over the slots,
// per token). Both come from one logit matrix, scale * normalize(x) . normalize(phi_s), with phi a
// learned embedding per slot and both vectors L2-normalised over D (the paper's recipe for stable
// training at larger D). Every slot is always full, so nothing is dropped and nothing needs balancing.
// A slot mixes a whole sequence, later tokens included: Soft MoE is for non-causal encoders only.
//
// Shape legend: B sequences, T positions, D model width, E experts, p slots per expert, S = E * p.
#pragma once
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>

namespace moelab {

// The moe.router name that selects Soft MoE instead of a Router.
inline constexpr const char* kSoftRouter = "soft";

struct SoftSlotWeights {
  torch::Tensor dispatch;  // [B, T, S]: softmax over T per slot; 0 at padding
  torch::Tensor combine;   // [B, T, S]: softmax over S per position
  torch::Tensor logits;    // [B, T, S]
  int64_t slots_per_expert = 1;  // p: slots e * p .. e * p + p - 1 belong to expert e
};

class SoftSlots : public torch::nn::Module {
 public:
  SoftSlots(int64_t model_dim, int64_t num_experts, int64_t slots_per_expert);

  // x [B, T, D]; real [B, T] bool, true at real tokens (padding gets no dispatch weight). A sequence
  // without any real token dispatches evenly over its (zero) rows instead of dividing by zero.
  SoftSlotWeights forward(const torch::Tensor& x, const torch::Tensor& real) const;

  int64_t num_experts() const { return num_experts_; }
  int64_t slots_per_expert() const { return slots_per_expert_; }
  int64_t num_slots() const { return num_experts_ * slots_per_expert_; }
  // Per token: the logits, its share of the slot averages, and its combine (2 x multiply-adds each).
  int64_t flops_per_token() const { return 3 * 2 * model_dim_ * num_slots(); }

  torch::Tensor slot_embedding;  // phi [D, S]
  torch::Tensor scale;           // [] learned logit scale

 private:
  int64_t model_dim_;
  int64_t num_experts_;
  int64_t slots_per_expert_;
};

}  // namespace moelab
