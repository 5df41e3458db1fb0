// Perplexity of a language model on a token stream, with the hidden state carried across windows
// exactly as in training, dropout and router noise off.
#pragma once
#include <torch/types.h>

#include "moelab/comm/communicator.h"
#include "moelab/layers/routing_stats.h"
#include "moelab/models/language_model.h"

namespace moelab {

struct EvalResult {
  double loss = 0;  // mean nats per token
  double perplexity = 0;
  int64_t tokens = 0;
};

// max_tokens > 0 evaluates on a prefix of that many tokens. Routing statistics of every MoE layer
// are added to `routing` (one accumulator per layer) when given. A model without recurrent state
// sees each window on its own.
// With a communicator of W > 1 ranks this is a collective: each rank evaluates its share of the
// batch columns and the sums are combined, so every rank gets the single-process figures (the
// per-token losses are the same; only the order of summation differs). With fewer columns than
// ranks every rank evaluates all of them.
EvalResult evaluate_language_model(LanguageModelImpl& model, const torch::Tensor& stream, int64_t batch,
                                   int64_t bptt, int64_t max_tokens, std::vector<RoutingStatsAccumulator>* routing,
                                   Communicator* communicator = nullptr);

}  // namespace moelab
