#include "moelab/data/singleton_unk.h"

#include <torch/torch.h>

#include "moelab/util/error.h"

namespace moelab {

SingletonUnk::SingletonUnk(const Vocabulary& words, const std::unordered_map<std::string, int64_t>& train_counts,
                           double probability)
    : unk_id_(words.unk_id()), probability_(probability) {
  if (!(probability >= 0 && probability <= 1)) fail("singleton <unk> probability must be in [0, 1], got {}", probability);
  is_singleton_ = torch::zeros({words.size()}, torch::kBool);
  auto* flags = is_singleton_.data_ptr<bool>();
  for (const auto& [word, count] : train_counts) {
    if (count != 1 || !words.contains(word)) continue;
    const auto id = words.id(word);
    if (id == unk_id_) continue;
    flags[id] = true;
    ++singletons_;
  }
}

torch::Tensor SingletonUnk::apply(const torch::Tensor& ids) const {
  if (!active()) return ids;
  if (is_singleton_.device() != ids.device()) is_singleton_ = is_singleton_.to(ids.device());
  const auto singleton = is_singleton_.index({ids});
  const auto drawn = torch::rand(ids.sizes(), torch::TensorOptions().device(ids.device())) < probability_;
  return ids.masked_fill(singleton & drawn, unk_id_);
}

}  // namespace moelab
