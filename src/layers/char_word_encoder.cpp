#include "moelab/layers/char_word_encoder.h"

#include <torch/nn/utils/rnn.h>

#include <limits>

#include "moelab/util/error.h"

namespace moelab {

torch::Tensor word_bytes(const std::vector<const std::string*>& words) {
  int64_t longest = 1;
  for (const auto* word : words) {
    if (word->empty()) fail("character features: a word is empty");
    longest = std::max<int64_t>(longest, std::min<int64_t>(static_cast<int64_t>(word->size()), kMaxWordBytes));
  }
  auto bytes = torch::zeros({static_cast<int64_t>(words.size()), longest}, torch::kLong);
  auto table = bytes.accessor<int64_t, 2>();
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& word = *words[w];
    const auto n = std::min<int64_t>(static_cast<int64_t>(word.size()), kMaxWordBytes);
    for (int64_t i = 0; i < n; ++i)
      table[static_cast<int64_t>(w)][i] = static_cast<int64_t>(static_cast<unsigned char>(word[static_cast<size_t>(i)])) + 1;
  }
  return bytes;
}

CharWordEncoderImpl::CharWordEncoderImpl(const CharWordEncoderOptions& options_) : options(options_) {
  if (options.embed_dim() < 1 || options.hidden_dim() < 1)
    fail("model.char_embed and model.char_hidden must be >= 1, got {} and {}", options.embed_dim(), options.hidden_dim());
  embedding = register_module("embedding", torch::nn::Embedding(torch::nn::EmbeddingOptions(257, options.embed_dim())
                                                                     .padding_idx(0)));
  if (options.kind() == "cnn") {
    conv = register_module("conv", torch::nn::Conv1d(torch::nn::Conv1dOptions(options.embed_dim(), options.hidden_dim(), 3)
                                                         .padding(1)));
  } else if (options.kind() == "bilstm") {
    lstm = register_module(
        "lstm", torch::nn::LSTM(torch::nn::LSTMOptions(options.embed_dim(), options.hidden_dim()).bidirectional(true)));
  } else {
    fail("model.char_encoder must be cnn or bilstm, got '{}'", options.kind());
  }
}

torch::Tensor CharWordEncoderImpl::forward(const torch::Tensor& bytes) {
  TORCH_CHECK(bytes.dim() == 2, "character features: bytes must be [W, L], got ", bytes.sizes());
  const auto padding = bytes.eq(0);  // [W, L]
  const auto embedded = embedding(bytes);  // [W, L, E]
  if (conv) {
    // Padding must neither win the max nor leak into a real byte's window: zero embeddings at
    // padding (padding_idx) keep the windows of the last bytes as a word of exactly its length
    // would see them, and the max skips padded positions.
    const auto features = conv(embedded.transpose(1, 2)).transpose(1, 2);  // [W, L, H]
    return features.masked_fill(padding.unsqueeze(2), -std::numeric_limits<float>::infinity()).amax(1);
  }
  const auto lengths = padding.logical_not().sum(1).to(torch::kCPU);
  const auto packed = torch::nn::utils::rnn::pack_padded_sequence(embedded, lengths, /*batch_first=*/true,
                                                                  /*enforce_sorted=*/false);
  auto [out, state] = lstm->forward_with_packed_input(packed);
  const auto& last = std::get<0>(state);  // [2, W, H], back in the words' order
  return torch::cat({last[0], last[1]}, 1);
}

int64_t CharWordEncoderImpl::flops_per_word() const {
  const double e = static_cast<double>(options.embed_dim()), h = static_cast<double>(options.hidden_dim());
  const double bytes = options.mean_word_bytes();
  if (conv) return static_cast<int64_t>(2 * bytes * 3 * e * h);
  return static_cast<int64_t>(2 * 2 * bytes * 4 * h * (e + h));  // two directions, four gates, input and recurrent
}

}  // namespace moelab
