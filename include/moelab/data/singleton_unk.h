// Singleton replacement (Lample et al. 2016): while training, a word seen only once in the training
// data is read as <unk> with probability p. Without it <unk>'s embedding is trained only on words
// cut by data.min_count, or never (min_count = 1), yet every unseen word at test time lands on it;
// with it, rare words keep their own vectors and <unk> learns what rare words look like.
#pragma once
#include <torch/types.h>

#include <string>
#include <unordered_map>

#include "moelab/data/vocabulary.h"

namespace moelab {

class SingletonUnk {
 public:
  SingletonUnk() = default;
  // train_counts: training words as the model looks them up (see lookup_form); p in [0, 1].
  SingletonUnk(const Vocabulary& words, const std::unordered_map<std::string, int64_t>& train_counts, double probability);

  bool active() const { return probability_ > 0 && singletons_ > 0; }
  int64_t singletons() const { return singletons_; }
  // Word ids (long, any shape and device) with each singleton replaced by <unk> with probability p,
  // drawn from LibTorch's generator (so a seeded run replaces the same words); other ids unchanged.
  torch::Tensor apply(const torch::Tensor& ids) const;

 private:
  mutable torch::Tensor is_singleton_;  // [vocabulary] bool, moved to the ids' device on first use
  int64_t unk_id_ = -1;
  int64_t singletons_ = 0;
  double probability_ = 0;
};

}  // namespace moelab
