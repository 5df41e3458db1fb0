#include "moelab/train/translation_decoding.h"

#include <algorithm>

namespace moelab {

std::vector<Hypothesis> translate_ids(TranslationModelImpl& model, const std::vector<std::vector<int64_t>>& sources,
                                      const SearchOptions& options, int64_t batch_tokens, const torch::Device& device,
                                      int64_t* truncated) {
  torch::NoGradGuard no_grad;
  const int64_t max_positions = model.max_positions();
  std::vector<SentencePairIds> pairs;
  int64_t cut = 0;
  for (const auto& source : sources) {
    SentencePairIds pair{source, {}};
    if (max_positions > 0 && static_cast<int64_t>(source.size()) > max_positions) {
      pair.source.resize(static_cast<size_t>(max_positions));
      pair.source.back() = options.eos;
      ++cut;
    }
    pairs.push_back(std::move(pair));
  }
  if (truncated) *truncated = cut;
  // The budget counts the source alone here: the output length is not known yet, and beam search
  // multiplies the rows anyway.
  std::vector<Hypothesis> results(sources.size());
  for (const auto& batch : batches_by_length(pairs, batch_tokens, /*seed=*/0)) {
    std::vector<std::vector<int64_t>> columns;
    std::vector<int64_t> lengths;
    for (const int64_t i : batch) {
      columns.push_back(pairs[static_cast<size_t>(i)].source);
      lengths.push_back(static_cast<int64_t>(columns.back().size()));
    }
    const auto source = pad_columns(columns, options.pad).to(device);
    const auto source_lengths = torch::tensor(lengths, torch::kInt64).to(device);
    const auto hypotheses = translate_batch(model, source, source_lengths, options);
    for (size_t j = 0; j < batch.size(); ++j) results[static_cast<size_t>(batch[j])] = hypotheses[j];
  }
  return results;
}

}  // namespace moelab
