#include "moelab/data/translation_batches.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "moelab/util/mix64.h"

namespace moelab {

torch::Tensor pad_columns(const std::vector<std::vector<int64_t>>& sentences, int64_t pad) {
  size_t longest = 0;
  for (const auto& sentence : sentences) longest = std::max(longest, sentence.size());
  auto out = torch::full({static_cast<int64_t>(longest), static_cast<int64_t>(sentences.size())}, pad, torch::kInt64);
  auto view = out.accessor<int64_t, 2>();
  for (size_t b = 0; b < sentences.size(); ++b)
    for (size_t t = 0; t < sentences[b].size(); ++t) view[t][b] = sentences[b][t];
  return out;
}

TranslationBatch make_translation_batch(const std::vector<SentencePairIds>& pairs, const std::vector<int64_t>& indices,
                                        const SpecialIds& ids, const torch::Device& device) {
  std::vector<std::vector<int64_t>> sources, inputs, outputs;
  std::vector<int64_t> source_lengths;
  TranslationBatch batch;
  for (const int64_t i : indices) {
    const auto& pair = pairs[static_cast<size_t>(i)];
    sources.push_back(pair.source);
    source_lengths.push_back(static_cast<int64_t>(pair.source.size()));
    std::vector<int64_t> input = {ids.bos};
    input.insert(input.end(), pair.target.begin(), pair.target.end());
    std::vector<int64_t> output = pair.target;
    output.push_back(ids.eos);
    batch.source_tokens += static_cast<int64_t>(pair.source.size());
    batch.target_tokens += static_cast<int64_t>(output.size());
    inputs.push_back(std::move(input));
    outputs.push_back(std::move(output));
  }
  batch.source = pad_columns(sources, ids.pad).to(device);
  batch.source_lengths = torch::tensor(source_lengths, torch::kInt64).to(device);
  batch.target_input = pad_columns(inputs, ids.pad).to(device);
  batch.target_output = pad_columns(outputs, ids.pad).to(device);
  // Positions past a target's end-of-sentence; the input there is padding too.
  std::vector<std::vector<int64_t>> real;
  for (const auto& output : outputs) real.push_back(std::vector<int64_t>(output.size(), 1));
  batch.target_padding = pad_columns(real, 0).eq(0).to(device);
  return batch;
}

std::vector<std::vector<int64_t>> batches_by_length(const std::vector<SentencePairIds>& pairs, int64_t batch_tokens,
                                                    uint64_t seed) {
  std::vector<int64_t> order(pairs.size());
  std::iota(order.begin(), order.end(), 0);
  if (seed != 0) std::shuffle(order.begin(), order.end(), std::mt19937_64(mix64(seed)));
  auto key = [&](int64_t i) {
    const auto& pair = pairs[static_cast<size_t>(i)];
    return std::make_pair(pair.source.size(), pair.target.size());
  };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
  std::vector<std::vector<int64_t>> batches;
  std::vector<int64_t> current;
  size_t longest = 0;
  for (const int64_t i : order) {
    const auto& pair = pairs[static_cast<size_t>(i)];
    const size_t length = std::max(pair.source.size(), pair.target.size() + 1);
    const size_t grown = std::max(longest, length);
    if (!current.empty() && static_cast<int64_t>(grown * (current.size() + 1)) > batch_tokens) {
      batches.push_back(std::move(current));
      current.clear();
      longest = 0;
    }
    current.push_back(i);
    longest = std::max(longest, length);
  }
  if (!current.empty()) batches.push_back(std::move(current));
  return batches;
}

std::vector<int64_t> epoch_order(int64_t count, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(count));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(mix64(seed * 1000003 + static_cast<uint64_t>(epoch))));
  return order;
}

}  // namespace moelab
