#include "moelab/models/incremental_decoder.h"

#include <algorithm>

#include "moelab/device/device.h"
#include "moelab/models/transformer_language_model.h"
#include "moelab/util/error.h"

namespace moelab {

IncrementalDecoder::IncrementalDecoder(LanguageModelPtr model, bool use_cache)
    : model_(std::move(model)), use_cache_(use_cache) {
  if (auto transformer = std::dynamic_pointer_cast<TransformerLanguageModelImpl>(model_))
    context_ = transformer->options.context();
}

torch::Tensor IncrementalDecoder::feed(const std::vector<int64_t>& tokens) {
  if (tokens.empty()) fail("IncrementalDecoder::feed needs at least one token");
  torch::NoGradGuard no_grad;
  const auto device = module_device(*model_);
  auto column = [&](std::vector<int64_t>::const_iterator first, std::vector<int64_t>::const_iterator last) {
    return torch::tensor(std::vector<int64_t>(first, last), torch::kInt64).unsqueeze(1).to(device);  // [T, 1]
  };
  const size_t before = history_.size();
  history_.insert(history_.end(), tokens.begin(), tokens.end());
  LanguageModelOutput out;
  if (context_ == 0) {
    out = model_->forward(column(history_.begin() + static_cast<std::ptrdiff_t>(before), history_.end()), state_);
    state_ = out.state;
  } else {
    auto& transformer = static_cast<TransformerLanguageModelImpl&>(*model_);
    const bool fits = static_cast<int64_t>(history_.size()) <= context_;
    if (use_cache_ && fits) {
      out = transformer.forward_cached(column(history_.begin() + static_cast<std::ptrdiff_t>(before), history_.end()), cache_);
    } else {
      // The last `context` tokens from position 0; a cache built past the window is no longer valid.
      cache_.clear();
      const auto window = std::min<int64_t>(static_cast<int64_t>(history_.size()), context_);
      out = transformer.forward(column(history_.end() - window, history_.end()), {});
    }
  }
  // Only the last position's distribution is wanted: the output layer runs on that one row.
  return model_->log_probs(out.features.select(0, -1)).select(0, 0);
}

}  // namespace moelab
