#include "moelab/models/language_model.h"

#include "moelab/util/mix64.h"

namespace moelab {

LstmState LstmState::detached() const {
  LstmState out;
  for (const auto& t : tensors) out.tensors.push_back(t.defined() ? t.detach() : t);
  return out;
}

void LanguageModelImpl::mask_gradients(uint64_t seed, int64_t step) {
  // Layers above the first draw their own masks; the first keeps the seed the LSTM model used.
  const auto layers = moe_layers();
  for (size_t i = 0; i < layers.size(); ++i)
    layers[i].layer->experts->mask_gradients(i == 0 ? seed : mix64(seed + i), step);
}

}  // namespace moelab
