// Next-token distributions for generation, fed a few tokens at a time, for either backbone: the
// LSTM carries its state; the Transformer keeps a key/value cache per block, so each new token costs
// one position's work. The model conditions on at most model.context tokens: once the text is
// longer, each step recomputes over the last `context` tokens (positions restart at 0), exactly as
// the uncached path does, so cached and recomputed generation agree.
#pragma once
#include <torch/types.h>

#include <vector>

#include "moelab/layers/causal_self_attention.h"
#include "moelab/models/language_model.h"

namespace moelab {

class IncrementalDecoder {
 public:
  // use_cache = false recomputes the Transformer over the whole (windowed) history at every call:
  // the slow, obviously correct twin of the cache. The LSTM always carries its state.
  explicit IncrementalDecoder(LanguageModelPtr model, bool use_cache = true);

  // Appends tokens (at least one) and returns the log-probabilities of the next token, [V].
  torch::Tensor feed(const std::vector<int64_t>& tokens);

 private:
  LanguageModelPtr model_;
  bool use_cache_;
  int64_t context_ = 0;  // Transformer window; 0 for the LSTM
  std::vector<int64_t> history_;
  LstmState state_;
  std::vector<AttentionCache> cache_;
};

}  // namespace moelab
