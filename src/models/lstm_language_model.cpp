#include "moelab/models/lstm_language_model.h"

#include "moelab/util/error.h"

namespace moelab {

namespace {

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> run_lstm(torch::nn::LSTM& lstm, const torch::Tensor& x,
                                                                 const torch::Tensor& h, const torch::Tensor& c) {
  auto [out, hc] = h.defined() ? lstm->forward(x, std::make_tuple(h, c)) : lstm->forward(x);
  return {out, std::get<0>(hc), std::get<1>(hc)};
}

}  // namespace

LstmLanguageModelImpl::LstmLanguageModelImpl(const LstmLanguageModelOptions& options_) : options(options_) {
  if (options.vocab_size() < 2) fail("the vocabulary needs at least 2 entries, got {}", options.vocab_size());
  if (options.middle() != "none" && !options.moe())
    fail("model middle layer '{}' needs MoE options", options.middle());
  reset();
}

void LstmLanguageModelImpl::reset() {
  const int64_t v = options.vocab_size(), e = options.embed_dim(), d = options.hidden_dim();
  embedding = register_module("embedding", torch::nn::Embedding(v, e));
  dropout = register_module("dropout", Dropout(options.dropout()));
  int64_t width = e;
  if (options.layers_before() > 0) {
    lstm_before = register_module(
        "lstm_before", torch::nn::LSTM(torch::nn::LSTMOptions(width, d).num_layers(options.layers_before())));
    width = d;
  }
  if (options.middle() == "moe") {
    auto moe_options = *options.moe();
    moe_options.model_dim(width);
    moe = register_module("moe", MoELayer(moe_options));
  } else if (options.middle() == "dense" || options.middle() == "deep") {
    const auto& m = *options.moe();
    const bool deep = options.middle() == "deep";
    const int64_t layers = deep ? options.deep_layers() : 1;  // DenseFfn refuses fewer than 1
    const int64_t hidden = deep && options.deep_hidden() > 0
                               ? options.deep_hidden()
                               : deep_hidden_for_flops(width, m.k() * m.expert_hidden(), layers);
    dense = register_module("dense", DenseFfn(DenseFfnOptions(width, hidden)
                                                  .hidden_layers(layers)
                                                  .hidden_dropout(m.expert_dropout())));
  } else if (options.middle() != "none") {
    fail("unknown middle layer '{}' (known: none, moe, dense, deep)", options.middle());
  }
  if (options.middle_norm() == "pre" || options.middle_norm() == "post") {
    if (moe || dense) middle_norm = register_module("middle_norm", Norm("layernorm", width));
  } else if (options.middle_norm() != "none") {
    fail("unknown model.middle_norm '{}' (known: none, pre, post)", options.middle_norm());
  }
  if (options.layers_after() > 0) {
    lstm_after = register_module(
        "lstm_after", torch::nn::LSTM(torch::nn::LSTMOptions(width, d).num_layers(options.layers_after())));
    width = d;
  }
  int64_t out_width = width;
  if (options.tie_weights() && width != e) {
    tie_projection = register_module("tie_projection", torch::nn::Linear(width, e));
    out_width = e;
  }
  head = SoftmaxOutput(*this,
                       {out_width, v, options.softmax(), options.adaptive_cutoffs(), options.tie_weights()},
                       embedding);
  // Embeddings at the scale LSTM LMs commonly use; LibTorch's default N(0, 1) is large for them.
  torch::NoGradGuard no_grad;
  embedding->weight.uniform_(-0.1, 0.1);
}

LanguageModelOutput LstmLanguageModelImpl::forward(const torch::Tensor& tokens, const LstmState& state) {
  TORCH_CHECK(tokens.dim() == 2, "language model expects tokens [T, B], got ", tokens.sizes());
  LanguageModelOutput out;
  const auto& s = state.tensors;
  auto at = [&](size_t i) { return i < s.size() ? s[i] : torch::Tensor(); };
  out.state.tensors.resize(4);

  auto x = dropout(embedding(tokens));  // [T, B, embed]
  if (lstm_before) {
    auto [y, h, c] = run_lstm(lstm_before, x, at(0), at(1));
    x = y;
    out.state.tensors[0] = h;
    out.state.tensors[1] = c;
  }
  out.aux_loss = torch::zeros({}, x.options());
  if (moe || dense) {
    const auto shape = x.sizes().vec();
    const bool pre = middle_norm && options.middle_norm() == "pre";
    // [T*B, D]: every position of the batch at once
    const auto flat = (pre ? middle_norm(x) : x).reshape({-1, shape.back()});
    torch::Tensor y;
    if (moe) {
      auto m = moe(flat, tokens.reshape({-1}), SequenceLayout::grid(shape[0], shape[1]));  // ids: hash routing
      y = m.output;
      out.aux_loss = m.aux_loss;
      out.loss_terms = m.loss_terms;
      out.routing.push_back(m.stats);
    } else {
      y = dense(flat);
    }
    y = dropout(y.view(shape));
    x = options.residual() ? x + y : y;
    if (middle_norm && !pre) x = middle_norm(x);
  }
  if (lstm_after) {
    auto [y, h, c] = run_lstm(lstm_after, x, at(2), at(3));
    x = y;
    out.state.tensors[2] = h;
    out.state.tensors[3] = c;
  }
  x = dropout(x);
  if (tie_projection) x = tie_projection(x);
  out.features = x;
  return out;
}

torch::Tensor LstmLanguageModelImpl::loss(const torch::Tensor& features, const torch::Tensor& targets) {
  return head.loss(features.reshape({-1, features.size(-1)}), targets.reshape({-1}));
}

torch::Tensor LstmLanguageModelImpl::log_probs(const torch::Tensor& features) {
  return head.log_probs(features.reshape({-1, features.size(-1)}));
}

std::vector<NamedMoELayer> LstmLanguageModelImpl::moe_layers() const {
  if (!moe) return {};
  return {{"moe", moe}};
}

std::vector<LayerCost> LstmLanguageModelImpl::costs() const {
  std::vector<LayerCost> rows;
  // Every parameter of a dense part is active for every token (an embedding row is a lookup, no FLOPs).
  auto dense_row = [&](const std::string& name, const torch::nn::Module& module, int64_t flops) {
    rows.push_back(dense_cost(name, module, flops));
  };
  dense_row("embedding", *embedding, 0);
  if (lstm_before) dense_row("lstm_before", *lstm_before, lstm_flops(lstm_before));
  if (moe) rows.push_back({"moe", moe->params_total(), moe->params_active_per_token(), moe->flops_per_token()});
  if (dense) dense_row(options.middle() == "deep" ? "deep_ffn" : "dense_ffn", *dense, dense->flops_per_token());
  // A LayerNorm's few FLOPs per token are left out, as everywhere else in the cost table.
  if (middle_norm) dense_row("middle_norm", *middle_norm, 0);
  if (lstm_after) dense_row("lstm_after", *lstm_after, lstm_flops(lstm_after));
  if (tie_projection) dense_row("tie_projection", *tie_projection, 2 * tie_projection->weight.numel());
  for (auto& row : head.costs()) rows.push_back(row);
  return rows;
}

void LstmLanguageModelImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::LstmLanguageModel(vocab=" << options.vocab_size() << ", embed=" << options.embed_dim()
         << ", hidden=" << options.hidden_dim() << ", middle=" << options.middle() << ")";
}

}  // namespace moelab
