// A linear-chain conditional random field over the tags of packed sentences (Lafferty et al. 2001;
// the output layer of Lample et al. 2016's tagger). A sentence's tag sequence y scores
//   s(y) = start[y_0] + sum_t emission[t, y_t] + sum_{t>0} transition[y_{t-1}, y_t] + end[y_last],
// the loss is log Z - s(gold) with Z summed over every tag sequence (forward algorithm, log space),
// and decoding takes the best sequence (Viterbi). Forbidden transitions (IOB2: I-X only after B-X
// or I-X, never first) are excluded from both.
//
// Emissions arrive in packed order (data/packed_batches.h): batch_sizes[t] sentences, longest
// first, are still running at time t, so every step works on a prefix of the rows and no padding
// is ever scored. Shape legend: N real tokens, C tags, B sentences, T the longest sentence.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <string>
#include <vector>

namespace moelab {

struct CrfConstraints {
  torch::Tensor allowed;        // [C, C] bool: allowed[i][j] = tag j may follow tag i; undefined = all
  torch::Tensor allowed_start;  // [C] bool: the tag may open a sentence; undefined = all
};

// IOB2 rules over tag names ("O", "B-PER", "I-PER", ...): I-X may follow only B-X or I-X and may
// not open a sentence; everything else is allowed.
CrfConstraints iob2_constraints(const std::vector<std::string>& tags);

class LinearChainCrfImpl : public torch::nn::Module {
 public:
  explicit LinearChainCrfImpl(int64_t num_tags, CrfConstraints constraints = {});
  void reset_parameters();

  // emissions [N, C], batch_sizes [T] int64 on the CPU; returns [B]: log Z of each sentence.
  torch::Tensor log_partition(const torch::Tensor& emissions, const torch::Tensor& batch_sizes) const;
  // tags [N] int64 in packed order; returns [B]: s(tags) of each sentence.
  torch::Tensor sequence_score(const torch::Tensor& emissions, const torch::Tensor& batch_sizes,
                               const torch::Tensor& tags) const;
  // Summed negative log-likelihood of the batch's sentences divided by its tokens, so the loss
  // has the scale of a per-token cross-entropy.
  torch::Tensor loss(const torch::Tensor& emissions, const torch::Tensor& batch_sizes, const torch::Tensor& tags) const;
  // [N] int64: the highest-scoring allowed tag sequence of every sentence, packed.
  torch::Tensor decode(const torch::Tensor& emissions, const torch::Tensor& batch_sizes) const;

  // Whether a tag sequence breaks the constraints (for checking gold data before training).
  bool allows(const std::vector<int64_t>& tags) const;

  int64_t num_tags;
  torch::Tensor transitions;  // [C, C] from row tag to column tag
  torch::Tensor start;        // [C]
  torch::Tensor end;          // [C]

 private:
  // The parameters with `penalty` added where the constraints forbid.
  torch::Tensor constrained_transitions(double penalty) const;
  torch::Tensor constrained_start(double penalty) const;

  torch::Tensor forbidden_;        // [C, C] float: 1 where forbidden (a buffer, saved with the model)
  torch::Tensor forbidden_start_;  // [C] float
};
TORCH_MODULE(LinearChainCrf);

}  // namespace moelab
