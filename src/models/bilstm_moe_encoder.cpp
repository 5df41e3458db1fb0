#include "moelab/models/bilstm_moe_encoder.h"

#include <torch/nn/utils/rnn.h>

#include "moelab/util/error.h"

namespace moelab {

namespace {

using torch::nn::utils::rnn::PackedSequence;

torch::nn::LSTM bidirectional_lstm(int64_t input, int64_t hidden) {
  return torch::nn::LSTM(torch::nn::LSTMOptions(input, hidden).bidirectional(true));
}

torch::Tensor run_packed(torch::nn::LSTM& lstm, const torch::Tensor& x, const torch::Tensor& batch_sizes) {
  auto [out, state] = lstm->forward_with_packed_input(PackedSequence(x, batch_sizes));
  return out.data();
}

}  // namespace

BiLstmMoEEncoderImpl::BiLstmMoEEncoderImpl(const BiLstmMoEEncoderOptions& options_) : options(options_) {
  if (options.vocab_size() < 2) fail("the vocabulary needs at least 2 entries, got {}", options.vocab_size());
  if (options.middle() != "none" && !options.moe())
    fail("encoder middle layer '{}' needs MoE options", options.middle());
  reset();
}

void BiLstmMoEEncoderImpl::reset() {
  const int64_t width = 2 * options.hidden_dim();
  embedding = register_module("embedding", torch::nn::Embedding(options.vocab_size(), options.embed_dim()));
  int64_t input = options.embed_dim();
  if (options.chars()) {
    chars = register_module("chars", CharWordEncoder(*options.chars()));
    input += chars->output_dim();
  }
  if (options.token_features() < 0) fail("token_features must be >= 0, got {}", options.token_features());
  input += options.token_features();
  first = register_module("first", bidirectional_lstm(input, options.hidden_dim()));
  if (options.middle() == "moe") {
    auto moe_options = *options.moe();
    moe_options.model_dim(width);
    moe = register_module("moe", MoELayer(moe_options));
  } else if (options.middle() == "dense") {
    const auto& m = *options.moe();
    dense = register_module(
        "dense", DenseFfn(DenseFfnOptions(width, m.k() * m.expert_hidden()).hidden_dropout(m.expert_dropout())));
  } else if (options.middle() != "none") {
    fail("unknown middle layer '{}' (known: none, moe, dense)", options.middle());
  }
  second = register_module("second", bidirectional_lstm(width, options.hidden_dim()));
  dropout = register_module("dropout", Dropout(options.dropout()));
  torch::NoGradGuard no_grad;
  embedding->weight.uniform_(-0.1, 0.1);
  embedding->weight.set_requires_grad(!options.freeze_embeddings());
}

void BiLstmMoEEncoderImpl::set_embeddings(const torch::Tensor& matrix) {
  if (matrix.sizes() != embedding->weight.sizes())
    fail("embedding matrix is {}x{}, the model wants {}x{}", matrix.size(0), matrix.dim() > 1 ? matrix.size(1) : 0,
         embedding->weight.size(0), embedding->weight.size(1));
  torch::NoGradGuard no_grad;
  embedding->weight.copy_(matrix);
}

EncodedBatch BiLstmMoEEncoderImpl::forward(const torch::Tensor& ids, const torch::Tensor& batch_sizes,
                                           const torch::Tensor& bytes, const torch::Tensor& features) {
  TORCH_CHECK(ids.dim() == 1, "encoder expects packed ids [N], got ", ids.sizes());
  EncodedBatch out;
  auto words = embedding(ids);
  if (chars) {
    if (!bytes.defined() || bytes.dim() != 2 || bytes.size(0) != ids.size(0))
      fail("an encoder with character features needs the spelling of each of its {} tokens", ids.size(0));
    words = torch::cat({words, chars(bytes)}, 1);
  }
  words = dropout(words);
  if (options.token_features() > 0) {
    if (!features.defined() || features.dim() != 2 || features.size(0) != ids.size(0) ||
        features.size(1) != options.token_features())
      fail("the encoder needs {} features for each of its {} tokens", options.token_features(), ids.size(0));
    // After the dropout: a 0/1 indicator scaled by 1 / (1 - p) would carry noise, not information.
    words = torch::cat({words, features.to(words.scalar_type())}, 1);
  }
  auto x = run_packed(first, words, batch_sizes);  // [N, 2H]
  out.aux_loss = torch::zeros({}, x.options());
  if (moe || dense) {
    torch::Tensor y;
    if (moe) {
      auto m = moe(x, ids, SequenceLayout::packed(batch_sizes));
      y = m.output;
      out.aux_loss = m.aux_loss;
      out.loss_terms = m.loss_terms;
      out.routing.push_back(m.stats);
    } else {
      y = dense(x);
    }
    y = dropout(y);
    x = options.residual() ? x + y : y;
  }
  out.features = dropout(run_packed(second, x, batch_sizes));
  return out;
}

void BiLstmMoEEncoderImpl::mask_gradients(uint64_t seed, int64_t step) {
  if (moe) moe->experts->mask_gradients(seed, step);
}

std::vector<LayerCost> BiLstmMoEEncoderImpl::costs() const {
  std::vector<LayerCost> rows = {dense_cost("embedding", *embedding, 0)};
  if (chars) rows.push_back(dense_cost("char_features", *chars, chars->flops_per_word()));
  rows.push_back(dense_cost("bilstm_first", *first, lstm_flops(first)));
  if (moe) rows.push_back({"moe", moe->params_total(), moe->params_active_per_token(), moe->flops_per_token()});
  if (dense) rows.push_back(dense_cost("dense_ffn", *dense, dense->flops_per_token()));
  rows.push_back(dense_cost("bilstm_second", *second, lstm_flops(second)));
  return rows;
}

}  // namespace moelab
