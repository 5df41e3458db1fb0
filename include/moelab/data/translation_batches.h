// Sentence pairs as subword ids, and the padded batches a translation model trains and decodes on.
// Training batches group sentences of similar length (little padding) under a token budget; their
// composition is fixed by the seed and their order reshuffled each epoch from (seed, epoch), so a
// resumed run sees the batches an uninterrupted one does.
//
// Shape legend: S longest source, T longest target + 1, B sentences.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moelab {

struct SentencePairIds {
  std::vector<int64_t> source;  // subword ids, end-of-sentence last
  std::vector<int64_t> target;  // subword ids, no begin- or end-of-sentence
};

struct SpecialIds {
  int64_t pad = 0, bos = 2, eos = 3;
};

struct TranslationBatch {
  torch::Tensor source;          // [S, B] padded at the end
  torch::Tensor source_lengths;  // [B] int64
  torch::Tensor target_input;    // [T, B] begin-of-sentence, then the target
  torch::Tensor target_output;   // [T, B] the target, then end-of-sentence
  torch::Tensor target_padding;  // [T, B] bool
  int64_t source_tokens = 0, target_tokens = 0;  // real (unpadded) tokens, end-of-sentence included
};

// Columns of `sentences` padded at the end with `pad` -> [longest, B] int64.
torch::Tensor pad_columns(const std::vector<std::vector<int64_t>>& sentences, int64_t pad);

TranslationBatch make_translation_batch(const std::vector<SentencePairIds>& pairs, const std::vector<int64_t>& indices,
                                        const SpecialIds& ids, const torch::Device& device);

// Pair indices sorted by (source, target) length, ties broken by a seeded shuffle, then cut into
// batches whose padded size B * max(S, T) stays within batch_tokens (a longer pair gets a batch of
// its own). seed 0 keeps ties in corpus order (evaluation).
std::vector<std::vector<int64_t>> batches_by_length(const std::vector<SentencePairIds>& pairs, int64_t batch_tokens,
                                                    uint64_t seed);

// The order in which epoch `epoch` (0-based) visits `count` batches.
std::vector<int64_t> epoch_order(int64_t count, uint64_t seed, int64_t epoch);

}  // namespace moelab
