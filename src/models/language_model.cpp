#include "moelab/models/language_model.h"

#include "moelab/util/mix64.h"

namespace moelab {

LstmState LstmState::detached() const {
  LstmState out;
  for (const auto& t : tensors) out.tensors.push_back(t.defined() ? t.detach() : t);
  return out;
}

LstmState LstmState::columns(int64_t first, int64_t count) const {
  LstmState out;
  for (const auto& t : tensors) out.tensors.push_back(t.defined() ? t.narrow(1, first, count) : t);
  return out;
}

LstmState LstmState::concatenated(const std::vector<LstmState>& parts) {
  LstmState out;
  if (parts.empty() || parts.front().empty()) return out;
  for (size_t i = 0; i < parts.front().tensors.size(); ++i) {
    std::vector<torch::Tensor> pieces;
    for (const auto& part : parts) pieces.push_back(part.tensors.at(i));
    out.tensors.push_back(torch::cat(pieces, 1));
  }
  return out;
}

void LanguageModelImpl::mask_gradients(uint64_t seed, int64_t step) {
  // Layers above the first draw their own masks; the first keeps the seed the LSTM model used.
  const auto layers = moe_layers();
  for (size_t i = 0; i < layers.size(); ++i)
    layers[i].layer->experts->mask_gradients(i == 0 ? seed : mix64(seed + i), step);
}

}  // namespace moelab
