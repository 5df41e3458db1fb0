#include "moelab/models/beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "moelab/util/error.h"

namespace moelab {

namespace {

double length_penalty(double alpha, int64_t length) {
  return alpha == 0 ? 1.0 : std::pow((5.0 + static_cast<double>(length)) / 6.0, alpha);
}

std::vector<int64_t> length_limits(const SearchOptions& options, const torch::Tensor& source_lengths,
                                   int64_t max_positions) {
  const auto lengths = source_lengths.to(torch::kCPU).to(torch::kInt64);
  std::vector<int64_t> limits;
  for (int64_t b = 0; b < lengths.size(0); ++b)
    limits.push_back(max_output_length(options, lengths[b].item<int64_t>(), max_positions));
  return limits;
}

torch::Tensor index_tensor(const std::vector<int64_t>& values, const torch::Device& device) {
  return torch::tensor(values, torch::kInt64).to(device);
}

// The decoder's softmax spans the whole vocabulary, and label smoothing gives padding and
// begin-of-sentence some of its mass; neither is ever a word of a translation, so the searches
// never choose one (an untrained or barely trained model otherwise can, and the detokeniser would
// hide it while it still counted towards the length and the length penalty).
torch::Tensor next_token_log_probs(TranslationModelImpl& model, DecoderState& state, const torch::Tensor& tokens,
                                   const SearchOptions& options) {
  auto log_probs = model.decode_step(state, tokens).to(torch::kFloat64);
  return log_probs.index_fill_(1, index_tensor({options.pad, options.bos}, log_probs.device()),
                               -std::numeric_limits<double>::infinity());
}

void check_options(const SearchOptions& options) {
  if (options.beam < 1) fail("the beam size must be >= 1, got {}", options.beam);
  if (options.alpha < 0) fail("the length penalty alpha must be >= 0, got {}", options.alpha);
  if (options.max_ratio <= 0) fail("the maximum length ratio must be > 0, got {}", options.max_ratio);
}

}  // namespace

int64_t max_output_length(const SearchOptions& options, int64_t source_length, int64_t max_positions) {
  auto limit = static_cast<int64_t>(std::floor(options.max_ratio * static_cast<double>(source_length))) + options.max_offset;
  // The decoder's input at the last step holds begin-of-sentence and limit - 1 tokens.
  if (max_positions > 0) limit = std::min(limit, max_positions);
  return std::max<int64_t>(limit, 1);
}

std::vector<Hypothesis> greedy_search(TranslationModelImpl& model, const torch::Tensor& source,
                                      const torch::Tensor& source_lengths, const SearchOptions& options) {
  check_options(options);
  const auto device = source.device();
  const int64_t batch = source.size(1);
  const auto limits = length_limits(options, source_lengths, model.max_positions());
  auto state = model.start_decoding(model.encode(source, source_lengths));
  std::vector<Hypothesis> results(batch);
  std::vector<int64_t> active(batch);  // sentence of each row of the state
  for (int64_t b = 0; b < batch; ++b) active[b] = b;
  auto tokens = torch::full({batch}, options.bos, torch::TensorOptions().dtype(torch::kInt64).device(device));
  for (int64_t t = 0; !active.empty(); ++t) {
    const auto log_probs = next_token_log_probs(model, *state, tokens, options);  // [rows, V]
    const auto [best_values, best_tokens] = log_probs.max(1);
    const auto values_cpu = best_values.to(torch::kCPU), chosen_cpu = best_tokens.to(torch::kCPU);
    const auto values = values_cpu.accessor<double, 1>();
    const auto chosen = chosen_cpu.accessor<int64_t, 1>();
    std::vector<int64_t> keep_rows, keep_sentences, next_tokens;
    for (size_t row = 0; row < active.size(); ++row) {
      auto& result = results[active[row]];
      const int64_t token = chosen[row];
      result.log_prob += values[row];
      const bool ended = token == options.eos;
      if (!ended) result.tokens.push_back(token);
      if (ended || t + 1 >= limits[active[row]]) {
        result.finished = ended;
        result.score = result.log_prob / length_penalty(options.alpha, t + 1);
      } else {
        keep_rows.push_back(static_cast<int64_t>(row));
        keep_sentences.push_back(active[row]);
        next_tokens.push_back(token);
      }
    }
    if (keep_rows.empty()) break;
    if (keep_rows.size() != active.size()) state->select(index_tensor(keep_rows, device));
    active = keep_sentences;
    tokens = index_tensor(next_tokens, device);
  }
  return results;
}

std::vector<Hypothesis> beam_search(TranslationModelImpl& model, const torch::Tensor& source,
                                    const torch::Tensor& source_lengths, const SearchOptions& options) {
  check_options(options);
  const auto device = source.device();
  const int64_t batch = source.size(1), beam = options.beam;
  const auto limits = length_limits(options, source_lengths, model.max_positions());
  const double minus_infinity = -std::numeric_limits<double>::infinity();

  struct Live {
    std::vector<int64_t> tokens;
    double log_prob;
  };
  // Per active sentence: its live hypotheses (exactly `beam` rows of the state, dead ones at -inf).
  std::vector<std::vector<Live>> live(batch);
  std::vector<std::vector<Hypothesis>> finished(batch);
  std::vector<int64_t> active(batch);
  std::vector<int64_t> expand;
  for (int64_t b = 0; b < batch; ++b) {
    active[b] = b;
    live[b].push_back({{}, 0.0});
    for (int64_t k = 1; k < beam; ++k) live[b].push_back({{}, minus_infinity});
    for (int64_t k = 0; k < beam; ++k) expand.push_back(b);
  }
  auto state = model.start_decoding(model.encode(source, source_lengths));
  state->select(index_tensor(expand, device));
  auto tokens = torch::full({batch * beam}, options.bos, torch::TensorOptions().dtype(torch::kInt64).device(device));

  for (int64_t t = 0; !active.empty(); ++t) {
    const auto log_probs = next_token_log_probs(model, *state, tokens, options);  // [A * beam, V]
    const int64_t vocab = log_probs.size(1), rows = static_cast<int64_t>(active.size());
    std::vector<double> scores;
    for (int64_t a = 0; a < rows; ++a)
      for (const auto& hypothesis : live[active[a]]) scores.push_back(hypothesis.log_prob);
    const auto totals = (torch::tensor(scores, torch::kFloat64).to(device).view({rows, beam, 1}) +
                         log_probs.view({rows, beam, vocab}))
                            .view({rows, beam * vocab});
    const int64_t candidates = std::min(2 * beam, beam * vocab);
    const auto [top_values, top_indices] = totals.topk(candidates, 1, /*largest=*/true, /*sorted=*/true);
    const auto values = top_values.to(torch::kCPU), indices = top_indices.to(torch::kCPU);
    const auto value = values.accessor<double, 2>();
    const auto index = indices.accessor<int64_t, 2>();

    std::vector<int64_t> keep_rows, keep_sentences, next_tokens;
    for (int64_t a = 0; a < rows; ++a) {
      const int64_t sentence = active[a];
      const int64_t length = t + 1;  // tokens of a hypothesis extended now, end-of-sentence included
      const bool at_limit = length >= limits[sentence];
      std::vector<Live> next;
      std::vector<int64_t> parents;
      for (int64_t j = 0; j < candidates && static_cast<int64_t>(next.size()) < beam; ++j) {
        const double score = value[a][j];
        if (score == minus_infinity) break;
        const int64_t parent = index[a][j] / vocab, token = index[a][j] % vocab;
        const auto& from = live[sentence][parent];
        if (token == options.eos) {
          finished[sentence].push_back({from.tokens, score, score / length_penalty(options.alpha, length), true});
          continue;
        }
        auto extended = from.tokens;
        extended.push_back(token);
        next.push_back({std::move(extended), score});
        parents.push_back(a * beam + parent);
      }
      if (at_limit)
        for (auto& hypothesis : next)
          finished[sentence].push_back({hypothesis.tokens, hypothesis.log_prob,
                                        hypothesis.log_prob / length_penalty(options.alpha, length), false});
      // Done when nothing live can still beat the best finished hypothesis: log-probabilities only
      // fall as a hypothesis grows, and the penalty divides them by at most lp(limit).
      double best_finished = minus_infinity;
      for (const auto& hypothesis : finished[sentence]) best_finished = std::max(best_finished, hypothesis.score);
      double best_live = minus_infinity;
      for (const auto& hypothesis : next) best_live = std::max(best_live, hypothesis.log_prob);
      const double live_bound = best_live / length_penalty(options.alpha, limits[sentence]);
      const bool done = at_limit || next.empty() || (!finished[sentence].empty() && best_finished >= live_bound);
      if (done) continue;
      while (static_cast<int64_t>(next.size()) < beam) {  // too few live continuations: pad with dead rows
        next.push_back({{}, minus_infinity});
        parents.push_back(a * beam);
      }
      for (int64_t k = 0; k < beam; ++k) {
        keep_rows.push_back(parents[k]);
        next_tokens.push_back(next[k].tokens.empty() ? options.eos : next[k].tokens.back());
      }
      live[sentence] = std::move(next);
      keep_sentences.push_back(sentence);
    }
    if (keep_sentences.empty()) break;
    state->select(index_tensor(keep_rows, device));
    active = keep_sentences;
    tokens = index_tensor(next_tokens, device);
  }

  std::vector<Hypothesis> results(batch);
  for (int64_t b = 0; b < batch; ++b) {
    // The first of equal scores wins: the earlier-finished (shorter) hypothesis.
    const auto best = std::max_element(finished[b].begin(), finished[b].end(),
                                       [](const Hypothesis& x, const Hypothesis& y) { return x.score < y.score; });
    if (best != finished[b].end()) results[b] = *best;
  }
  return results;
}

std::vector<Hypothesis> translate_batch(TranslationModelImpl& model, const torch::Tensor& source,
                                        const torch::Tensor& source_lengths, const SearchOptions& options) {
  return options.beam == 1 ? greedy_search(model, source, source_lengths, options)
                           : beam_search(model, source, source_lengths, options);
}

}  // namespace moelab
