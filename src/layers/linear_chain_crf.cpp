#include "moelab/layers/linear_chain_crf.h"

#include <cmath>
#include <limits>

#include "moelab/types/sequence_layout.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

// The loss adds this to forbidden scores instead of -inf: a tag that no allowed path reaches (an
// I-X without its B-X) would otherwise make a log-sum-exp of only -inf, whose gradient is NaN.
// It outweighs any emission a trained tagger produces, and decoding forbids exactly (-inf).
constexpr double kLossPenalty = -1e4;

std::vector<int64_t> checked_batch_sizes(const torch::Tensor& batch_sizes, int64_t rows) {
  if (batch_sizes.dim() != 1 || batch_sizes.device().type() != torch::kCPU || batch_sizes.scalar_type() != torch::kLong)
    fail("CRF: batch_sizes must be a 1-D int64 tensor on the CPU");
  const auto contiguous = batch_sizes.contiguous();
  std::vector<int64_t> sizes(contiguous.data_ptr<int64_t>(), contiguous.data_ptr<int64_t>() + contiguous.numel());
  int64_t total = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    if (sizes[t] < 1 || (t > 0 && sizes[t] > sizes[t - 1]))
      fail("CRF: batch_sizes must be positive and non-increasing (a packed batch, longest first)");
    total += sizes[t];
  }
  if (total != rows) fail("CRF: batch_sizes cover {} tokens but the emissions have {}", total, rows);
  return sizes;
}

bool is_inside(const std::string& tag) { return tag.rfind("I-", 0) == 0; }

}  // namespace

CrfConstraints iob2_constraints(const std::vector<std::string>& tags) {
  const auto c = static_cast<int64_t>(tags.size());
  auto allowed = torch::ones({c, c}, torch::kBool);
  auto allowed_start = torch::ones({c}, torch::kBool);
  for (int64_t j = 0; j < c; ++j) {
    const auto& next = tags[static_cast<size_t>(j)];
    if (!is_inside(next)) continue;
    allowed_start[j] = false;
    const auto type = next.substr(2);
    for (int64_t i = 0; i < c; ++i) {
      const auto& previous = tags[static_cast<size_t>(i)];
      const bool same_entity = (previous == "B-" + type) || (previous == "I-" + type);
      allowed[i][j] = same_entity;
    }
  }
  return {allowed, allowed_start};
}

LinearChainCrfImpl::LinearChainCrfImpl(int64_t num_tags_, CrfConstraints constraints) : num_tags(num_tags_) {
  if (num_tags < 1) fail("CRF: needs at least 1 tag, got {}", num_tags);
  if (constraints.allowed.defined() && constraints.allowed.sizes() != torch::IntArrayRef({num_tags, num_tags}))
    fail("CRF: allowed transitions must be [{0}, {0}]", num_tags);
  if (constraints.allowed_start.defined() && constraints.allowed_start.sizes() != torch::IntArrayRef({num_tags}))
    fail("CRF: allowed start tags must be [{}]", num_tags);
  transitions = register_parameter("transitions", torch::zeros({num_tags, num_tags}));
  start = register_parameter("start", torch::zeros({num_tags}));
  end = register_parameter("end", torch::zeros({num_tags}));
  forbidden_ = register_buffer(
      "forbidden", constraints.allowed.defined() ? constraints.allowed.logical_not().to(torch::kFloat)
                                                 : torch::zeros({num_tags, num_tags}));
  forbidden_start_ = register_buffer(
      "forbidden_start", constraints.allowed_start.defined() ? constraints.allowed_start.logical_not().to(torch::kFloat)
                                                             : torch::zeros({num_tags}));
  reset_parameters();
}

void LinearChainCrfImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  // Small and random, as Lample et al. start; zeros would make every allowed path tie at first.
  transitions.uniform_(-0.1, 0.1);
  start.uniform_(-0.1, 0.1);
  end.uniform_(-0.1, 0.1);
}

torch::Tensor LinearChainCrfImpl::constrained_transitions(double penalty) const {
  if (std::isinf(penalty)) return transitions.masked_fill(forbidden_.to(torch::kBool), penalty);
  return transitions + penalty * forbidden_;
}

torch::Tensor LinearChainCrfImpl::constrained_start(double penalty) const {
  if (std::isinf(penalty)) return start.masked_fill(forbidden_start_.to(torch::kBool), penalty);
  return start + penalty * forbidden_start_;
}

torch::Tensor LinearChainCrfImpl::log_partition(const torch::Tensor& emissions, const torch::Tensor& batch_sizes) const {
  TORCH_CHECK(emissions.dim() == 2 && emissions.size(1) == num_tags, "CRF: emissions must be [N, ", num_tags, "]");
  const auto sizes = checked_batch_sizes(batch_sizes, emissions.size(0));
  const auto trans = constrained_transitions(kLossPenalty).to(emissions.scalar_type());
  // alpha[b, j]: log of the summed scores of every prefix of sentence b that ends in tag j. A
  // sentence that has ended keeps its alpha in the rows past the running prefix.
  auto alpha = constrained_start(kLossPenalty).to(emissions.scalar_type()) + emissions.slice(0, 0, sizes[0]);
  int64_t offset = sizes[0];
  for (size_t t = 1; t < sizes.size(); ++t) {
    const int64_t running = sizes[t];
    const auto step = torch::logsumexp(alpha.slice(0, 0, running).unsqueeze(2) + trans.unsqueeze(0), 1) +
                      emissions.slice(0, offset, offset + running);
    alpha = torch::cat({step, alpha.slice(0, running)});
    offset += running;
  }
  return torch::logsumexp(alpha + end.to(emissions.scalar_type()), 1);
}

torch::Tensor LinearChainCrfImpl::sequence_score(const torch::Tensor& emissions, const torch::Tensor& batch_sizes,
                                                 const torch::Tensor& tags) const {
  TORCH_CHECK(emissions.dim() == 2 && emissions.size(1) == num_tags, "CRF: emissions must be [N, ", num_tags, "]");
  TORCH_CHECK(tags.dim() == 1 && tags.size(0) == emissions.size(0), "CRF: tags must be [N]");
  const auto sizes = checked_batch_sizes(batch_sizes, emissions.size(0));
  const auto device = emissions.device();
  const int64_t sentences = sizes[0];
  // Row indices of every (previous, current) pair and of each sentence's last token, from the
  // packed layout alone: row b of time t sits at offset(t) + b.
  std::vector<int64_t> previous_rows, current_rows, last_rows(static_cast<size_t>(sentences));
  int64_t offset = 0;
  for (size_t t = 0; t < sizes.size(); ++t) {
    for (int64_t b = 0; b < sizes[t]; ++b) {
      if (t > 0) {
        previous_rows.push_back(offset - sizes[t - 1] + b);
        current_rows.push_back(offset + b);
      }
      last_rows[static_cast<size_t>(b)] = offset + b;  // overwritten while the sentence runs
    }
    offset += sizes[t];
  }
  auto as_index = [&](const std::vector<int64_t>& rows) {
    return torch::tensor(rows, torch::kLong).to(device);
  };
  const auto sentence_of_row = SequenceLayout::packed(batch_sizes).sequence_of_rows(device);
  const auto dtype = emissions.scalar_type();
  auto score = torch::zeros({sentences}, emissions.options());
  score = score.index_add(0, sentence_of_row, emissions.gather(1, tags.unsqueeze(1)).squeeze(1));
  score = score + constrained_start(kLossPenalty).to(dtype).index_select(0, tags.slice(0, 0, sentences));
  if (!current_rows.empty()) {
    const auto current = as_index(current_rows);
    const auto from = tags.index_select(0, as_index(previous_rows));
    const auto to = tags.index_select(0, current);
    const auto pair_scores = constrained_transitions(kLossPenalty).to(dtype).index({from, to});
    score = score.index_add(0, sentence_of_row.index_select(0, current), pair_scores);
  }
  score = score + end.to(dtype).index_select(0, tags.index_select(0, as_index(last_rows)));
  return score;
}

torch::Tensor LinearChainCrfImpl::loss(const torch::Tensor& emissions, const torch::Tensor& batch_sizes,
                                       const torch::Tensor& tags) const {
  const auto negative_log_likelihood = log_partition(emissions, batch_sizes) - sequence_score(emissions, batch_sizes, tags);
  return negative_log_likelihood.sum() / static_cast<double>(emissions.size(0));
}

torch::Tensor LinearChainCrfImpl::decode(const torch::Tensor& emissions, const torch::Tensor& batch_sizes) const {
  TORCH_CHECK(emissions.dim() == 2 && emissions.size(1) == num_tags, "CRF: emissions must be [N, ", num_tags, "]");
  const auto sizes = checked_batch_sizes(batch_sizes, emissions.size(0));
  const double never = -std::numeric_limits<double>::infinity();
  const auto e = emissions.detach();
  const auto trans = constrained_transitions(never).detach().to(e.scalar_type());
  // best[b, j]: the score of sentence b's best prefix ending in tag j; back[t][b, j]: its tag at t - 1.
  auto best = constrained_start(never).detach().to(e.scalar_type()) + e.slice(0, 0, sizes[0]);
  std::vector<torch::Tensor> back(sizes.size());
  std::vector<int64_t> offsets(sizes.size(), 0);
  for (size_t t = 1; t < sizes.size(); ++t) {
    offsets[t] = offsets[t - 1] + sizes[t - 1];
    const int64_t running = sizes[t];
    const auto candidates = best.slice(0, 0, running).unsqueeze(2) + trans.unsqueeze(0);  // [b, from, to]
    auto [top, from] = candidates.max(1);
    back[t] = from;
    best = torch::cat({top + e.slice(0, offsets[t], offsets[t] + running), best.slice(0, running)});
  }
  const auto last_tag = (best + end.detach().to(e.scalar_type())).argmax(1);  // [B]
  // Backtrack from the last step: sentences that end at t (rows sizes[t + 1] .. sizes[t] - 1)
  // join with their best last tag; the others follow their back-pointers.
  std::vector<torch::Tensor> per_step(sizes.size());
  torch::Tensor current = last_tag.slice(0, 0, 0);
  for (auto t = static_cast<int64_t>(sizes.size()) - 1; t >= 0; --t) {
    const int64_t running = sizes[static_cast<size_t>(t)];
    current = torch::cat({current, last_tag.slice(0, current.size(0), running)});
    per_step[static_cast<size_t>(t)] = current;
    if (t > 0) current = back[static_cast<size_t>(t)].gather(1, current.unsqueeze(1)).squeeze(1);
  }
  return torch::cat(per_step);
}

bool LinearChainCrfImpl::allows(const std::vector<int64_t>& tags) const {
  if (tags.empty()) return true;
  const auto forbidden = forbidden_.to(torch::kCPU).contiguous();
  const auto forbidden_start = forbidden_start_.to(torch::kCPU).contiguous();
  const auto table = forbidden.accessor<float, 2>();
  for (const auto tag : tags)
    if (tag < 0 || tag >= num_tags) fail("CRF: tag {} outside 0 .. {}", tag, num_tags - 1);
  if (forbidden_start.accessor<float, 1>()[tags.front()] > 0) return false;
  for (size_t t = 1; t < tags.size(); ++t)
    if (table[tags[t - 1]][tags[t]] > 0) return false;
  return true;
}

}  // namespace moelab
