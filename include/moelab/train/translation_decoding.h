// Translating many sentences with a trained model: grouped by length into batches (little padding),
// decoded greedily or with beam search, returned in input order.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

#include "moelab/data/translation_batches.h"
#include "moelab/models/beam_search.h"

namespace moelab {

// sources: subword ids, end-of-sentence last. A source longer than the model's positions is cut to
// fit (its end-of-sentence kept); `truncated` (when given) counts them. The model should be in eval
// mode; gradients are off inside.
std::vector<Hypothesis> translate_ids(TranslationModelImpl& model, const std::vector<std::vector<int64_t>>& sources,
                                      const SearchOptions& options, int64_t batch_tokens, const torch::Device& device,
                                      int64_t* truncated = nullptr);

}  // namespace moelab
