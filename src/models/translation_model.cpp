#include "moelab/models/translation_model.h"

#include "moelab/util/mix64.h"

namespace moelab {

torch::Tensor padding_mask(int64_t length, const torch::Tensor& lengths) {
  const auto positions = torch::arange(length, lengths.options()).unsqueeze(1);  // [L, 1]
  return positions >= lengths.unsqueeze(0);
}

void RoutingOutput::add(const MoEOutput& moe) {
  aux_loss = aux_loss.defined() ? aux_loss + moe.aux_loss : moe.aux_loss;
  for (const auto& [name, value] : moe.loss_terms) loss_terms[name] = loss_terms.count(name) ? loss_terms[name] + value : value;
  routing.push_back(moe.stats);
}

void TranslationModelImpl::mask_gradients(uint64_t seed, int64_t step) {
  const auto layers = moe_layers();
  for (size_t i = 0; i < layers.size(); ++i) layers[i].layer->experts->mask_gradients(mix64(seed + i), step);
}

torch::Tensor label_smoothed_nll(const torch::Tensor& log_probs, const torch::Tensor& targets, double smoothing) {
  const auto nll = -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1);  // [N]
  if (smoothing <= 0) return nll.mean();
  const auto uniform = -log_probs.mean(1);  // cross-entropy with the uniform distribution
  return ((1.0 - smoothing) * nll + smoothing * uniform).mean();
}

}  // namespace moelab
