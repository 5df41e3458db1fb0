// Word features from a word's spelling (Lample et al. 2016; Ma and Hovy 2016), concatenated to the
// word embedding by the BiLSTM encoder: capital letters, digits, prefixes and suffixes reach the
// tagger even when the word vocabulary is lower-cased or the word is unknown.
//
// A word is its UTF-8 bytes (id = byte + 1, 0 = padding): no character vocabulary to build, save
// or miss, and any text works. Bytes are embedded, then either a width-3 convolution max-pooled
// over the word's real bytes ("cnn") or a bidirectional LSTM whose two final states are joined
// ("bilstm"). A word's features depend on its bytes only, never on the batch it is in.
#pragma once
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/rnn.h>

#include <string>
#include <vector>

namespace moelab {

struct CharWordEncoderOptions {
  CharWordEncoderOptions(int64_t embed_dim, int64_t hidden_dim) : embed_dim_(embed_dim), hidden_dim_(hidden_dim) {}
  TORCH_ARG(int64_t, embed_dim);
  /// cnn: filters; bilstm: width of each direction.
  TORCH_ARG(int64_t, hidden_dim);
  /// "cnn" or "bilstm".
  TORCH_ARG(std::string, kind) = "cnn";
  /// Mean bytes per word, only for the FLOPs count (the task measures it on its training words).
  TORCH_ARG(double, mean_word_bytes) = 6.0;
};

// Words longer than this keep their first kMaxWordBytes bytes.
constexpr int64_t kMaxWordBytes = 24;

// [W, L] int64 byte ids of the words (L = the longest, at most kMaxWordBytes), padded with 0.
torch::Tensor word_bytes(const std::vector<const std::string*>& words);

class CharWordEncoderImpl : public torch::nn::Module {
 public:
  explicit CharWordEncoderImpl(const CharWordEncoderOptions& options);

  // bytes [W, L] from word_bytes; returns [W, output_dim()].
  torch::Tensor forward(const torch::Tensor& bytes);
  int64_t output_dim() const { return options.kind() == "bilstm" ? 2 * options.hidden_dim() : options.hidden_dim(); }
  // Matrix-product FLOPs per word of options.mean_word_bytes bytes.
  int64_t flops_per_word() const;

  CharWordEncoderOptions options;
  torch::nn::Embedding embedding{nullptr};
  torch::nn::Conv1d conv{nullptr};
  torch::nn::LSTM lstm{nullptr};
};
TORCH_MODULE(CharWordEncoder);

}  // namespace moelab
