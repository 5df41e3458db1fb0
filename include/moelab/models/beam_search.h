// Decoding a translation model: greedy search and batched beam search with GNMT's length penalty
// (Wu et al. 2016): a finished hypothesis Y scores log P(Y | X) / lp(Y), lp(Y) = ((5 + |Y|) / 6)^alpha,
// |Y| counting its end-of-sentence token.
//
// Every sentence of a batch is searched on its own: its result does not depend on the other
// sentences or on their lengths (the model's padding masks and per-sentence length limits see to
// that), so batched and one-by-one decoding agree. Sentences that finish leave the batch. The one
// exception is an MoE layer with a capacity in evaluation (moe.eval_capacity_factor > 0, or
// moe.capacity_factor > 0 with -1): the rows of a batch then compete for each expert's slots, as
// they do in training, and a sentence's tokens may be dropped in one batch and not in another.
// Dropless evaluation, the default and what the shipped translation configs use, has no such
// dependence. Padding and begin-of-sentence are never chosen.
#pragma once
#include <cstdint>
#include <vector>

#include "moelab/models/translation_model.h"

namespace moelab {

struct SearchOptions {
  int64_t beam = 1;          // 1 = greedy
  double alpha = 0.6;        // length penalty exponent (0 = raw log-probability)
  double max_ratio = 1.5;    // a translation has at most max_ratio * source length + max_offset tokens
  int64_t max_offset = 10;
  int64_t pad = 0, bos = 2, eos = 3;  // vocabulary ids (source and target share the special ones)
};

struct Hypothesis {
  std::vector<int64_t> tokens;  // without begin- and end-of-sentence
  double log_prob = 0;          // log P(tokens, end-of-sentence | source)
  double score = 0;             // log_prob / lp (the beam's ranking)
  bool finished = true;         // false when it hit the length limit
};

// Longest output (end-of-sentence included) for a source of `source_length` tokens.
int64_t max_output_length(const SearchOptions& options, int64_t source_length, int64_t max_positions);

// source [S, B] padded, source_lengths [B]; the model in eval mode, no gradients. One hypothesis per
// sentence, in order.
std::vector<Hypothesis> greedy_search(TranslationModelImpl& model, const torch::Tensor& source,
                                      const torch::Tensor& source_lengths, const SearchOptions& options);
// options.beam live hypotheses kept per sentence. A hypothesis may end only when its end-of-sentence
// ranks above the beam-th live continuation, so beam 1 with alpha 0 is greedy search.
std::vector<Hypothesis> beam_search(TranslationModelImpl& model, const torch::Tensor& source,
                                    const torch::Tensor& source_lengths, const SearchOptions& options);
// beam_search, or greedy_search when options.beam == 1.
std::vector<Hypothesis> translate_batch(TranslationModelImpl& model, const torch::Tensor& source,
                                        const torch::Tensor& source_lengths, const SearchOptions& options);

}  // namespace moelab
