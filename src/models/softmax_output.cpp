#include "moelab/models/softmax_output.h"

#include "moelab/device/precision.h"
#include "moelab/util/error.h"

namespace moelab {

SoftmaxOutput::SoftmaxOutput(torch::nn::Module& owner, const SoftmaxOutputOptions& options,
                             torch::nn::Embedding embedding)
    : embedding_(std::move(embedding)) {
  const int64_t v = options.vocab_size;
  if (options.kind == "adaptive") {
    if (options.tied) fail("model.tie_weights is not supported with model.softmax = \"adaptive\"");
    std::vector<int64_t> cutoffs;
    for (auto c : options.adaptive_cutoffs) {
      if (c <= 0 || (!cutoffs.empty() && c <= cutoffs.back()))
        fail("model.adaptive_cutoffs must be positive and strictly ascending");
      if (c < v) cutoffs.push_back(c);
    }
    if (cutoffs.empty()) fail("model.adaptive_cutoffs: every cutoff is >= the vocabulary size {}", v);
    adaptive = owner.register_module(
        "adaptive", torch::nn::AdaptiveLogSoftmaxWithLoss(
                        torch::nn::AdaptiveLogSoftmaxWithLossOptions(options.width, v, cutoffs).div_value(4.0)));
  } else if (options.kind == "full") {
    if (options.tied)
      output_bias = owner.register_parameter("output_bias", torch::zeros({v}));  // weight is embedding's [V, D']
    else
      output = owner.register_module("output", torch::nn::Linear(options.width, v));
  } else {
    fail("unknown model.softmax '{}' (known: full, adaptive)", options.kind);
  }
}

// The output layer stays float32 under selective precision: a bf16 softmax over tens of thousands
// of words loses the small probabilities the loss is made of.
torch::Tensor SoftmaxOutput::loss(const torch::Tensor& flat, const torch::Tensor& targets) {
  const Float32Scope float32(flat.device());
  // ASMoutput::loss is a plain double in LibTorch 1.13 (no gradient); the per-token target
  // log-probabilities in .output carry the graph.
  if (adaptive) return -adaptive(flat, targets).output.mean();
  return torch::nn::functional::cross_entropy(logits(flat), targets);
}

torch::Tensor SoftmaxOutput::log_probs(const torch::Tensor& flat) {
  const Float32Scope float32(flat.device());
  if (adaptive) return adaptive->log_prob(flat);
  return torch::log_softmax(logits(flat), /*dim=*/1);
}

torch::Tensor SoftmaxOutput::logits(const torch::Tensor& flat) {
  if (output) return output(flat);
  return torch::nn::functional::linear(flat, embedding_->weight, output_bias);
}

std::vector<LayerCost> SoftmaxOutput::costs() const {
  std::vector<LayerCost> rows;
  if (output) rows.push_back(dense_cost("softmax", *output, 2 * output->weight.numel()));
  if (output_bias.defined())
    rows.push_back({"softmax (tied)", output_bias.numel(), output_bias.numel(), 2 * embedding_->weight.numel()});
  if (adaptive) {
    // Upper bound: the head plus every tail cluster, i.e. the cost of a full distribution.
    int64_t flops = 0;
    for (const auto& p : adaptive->parameters())
      if (p.dim() == 2) flops += 2 * p.numel();
    rows.push_back(dense_cost("adaptive_softmax", *adaptive, flops));
  }
  return rows;
}

}  // namespace moelab
