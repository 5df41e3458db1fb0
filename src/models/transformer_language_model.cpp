#include "moelab/models/transformer_language_model.h"

#include <cmath>

#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

TransformerBlockImpl::TransformerBlockImpl(const TransformerLanguageModelOptions& options, bool with_moe) {
  const int64_t d = options.model_dim();
  attention_norm = register_module("attention_norm", Norm(options.norm(), d));
  attention = register_module(
      "attention", CausalSelfAttention(CausalSelfAttentionOptions(d, options.heads())
                                           .rotary(options.positions() == "rope")
                                           .kernel(options.attention())));
  ffn_norm = register_module("ffn_norm", Norm(options.norm(), d));
  if (with_moe) {
    auto moe_options = *options.moe();
    moe_options.model_dim(d);
    moe = register_module("moe", MoELayer(moe_options));
  } else {
    const double ffn_dropout = options.ffn_dropout().value_or(options.dropout());
    dense = register_module("dense", DenseFfn(DenseFfnOptions(d, options.ffn_hidden()).hidden_dropout(ffn_dropout)));
  }
  dropout = register_module("dropout", Dropout(options.dropout()));
}

TransformerBlockOutput TransformerBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& token_ids,
                                                     AttentionCache* cache) {
  TransformerBlockOutput out;
  auto h = x + dropout(attention(attention_norm(x), cache));
  const auto shape = h.sizes().vec();
  const auto flat = ffn_norm(h).reshape({-1, shape.back()});  // [T*B, D]: every position at once
  torch::Tensor y;
  if (moe) {
    out.moe = moe(flat, token_ids, SequenceLayout::grid(shape[0], shape[1]));
    y = out.moe->output;
  } else {
    y = dense(flat);
  }
  out.x = h + dropout(y.view(shape));
  return out;
}

TransformerLanguageModelImpl::TransformerLanguageModelImpl(const TransformerLanguageModelOptions& options_)
    : options(options_) {
  const int64_t v = options.vocab_size(), d = options.model_dim();
  if (v < 2) fail("the vocabulary needs at least 2 entries, got {}", v);
  if (options.layers() < 1) fail("model.layers must be >= 1 for the transformer, got {}", options.layers());
  if (options.context() < 1) fail("model.context must be >= 1, got {}", options.context());
  if (options.positions() != "learned" && options.positions() != "rope")
    fail("unknown model.positions '{}' (known: learned, rope)", options.positions());
  if (options.moe_every() > 0 && !options.moe()) fail("moe_every = {} needs MoE options", options.moe_every());

  embedding = register_module("embedding", torch::nn::Embedding(v, d));
  if (options.positions() == "learned")
    positions = register_module("positions", torch::nn::Embedding(options.context(), d));
  dropout = register_module("dropout", Dropout(options.dropout()));
  block_list = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.layers(); ++i) {
    const bool with_moe = options.moe_every() > 0 && (i + 1) % options.moe_every() == 0;
    blocks.push_back(TransformerBlock(options, with_moe));
    block_list->push_back(blocks.back());
  }
  final_norm = register_module("final_norm", Norm(options.norm(), d));
  head = SoftmaxOutput(*this, {d, v, options.softmax(), options.adaptive_cutoffs(), options.tie_weights()}, embedding);

  // GPT-2's initialisation: N(0, 0.02) for embeddings and dense matrices, zero biases, and the
  // projections that write into the residual stream scaled by 1/sqrt(2 layers) so its variance
  // does not grow with depth. Expert banks keep their own initialisation.
  torch::NoGradGuard no_grad;
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(options.layers()));
  embedding->weight.normal_(0.0, 0.02);
  if (positions) positions->weight.normal_(0.0, 0.02);
  for (auto& block : blocks) {
    auto init = [](torch::nn::Linear& linear, double std) {
      linear->weight.normal_(0.0, std);
      linear->bias.zero_();
    };
    init(block->attention->qkv, 0.02);
    init(block->attention->project, residual_std);
    if (block->dense) {
      init(block->dense->up, 0.02);
      init(block->dense->down, residual_std);
    }
  }
  if (head.output) {
    head.output->weight.normal_(0.0, 0.02);
    head.output->bias.zero_();
  }
}

LanguageModelOutput TransformerLanguageModelImpl::run(const torch::Tensor& tokens, std::vector<AttentionCache>* cache) {
  TORCH_CHECK(tokens.dim() == 2, "language model expects tokens [T, B], got ", tokens.sizes());
  if (cache) cache->resize(blocks.size());
  const int64_t first = cache ? (*cache)[0].length() : 0;
  const int64_t t = tokens.size(0);
  if (positions && first + t > options.context())
    fail("the transformer's learned positions cover model.context = {} tokens; got a window reaching position {}",
         options.context(), first + t);
  auto x = embedding(tokens);  // [T, B, D]
  if (positions)
    x = x + positions(torch::arange(first, first + t, tokens.options())).unsqueeze(1);
  x = dropout(x);
  LanguageModelOutput out;
  out.aux_loss = torch::zeros({}, x.options());
  const auto token_ids = tokens.reshape({-1});  // the hash router needs them
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto block = blocks[i](x, token_ids, cache ? &(*cache)[i] : nullptr);
    x = block.x;
    if (block.moe) {
      out.aux_loss = out.aux_loss + block.moe->aux_loss;
      for (const auto& [name, value] : block.moe->loss_terms)
        out.loss_terms[name] = out.loss_terms.count(name) ? out.loss_terms[name] + value : value;
      out.routing.push_back(block.moe->stats);
    }
  }
  // The logged loss terms (unweighted) are the mean over MoE layers, comparable with one layer's.
  for (auto& [name, value] : out.loss_terms) value = value / static_cast<double>(out.routing.size());
  out.features = final_norm(x);
  return out;
}

LanguageModelOutput TransformerLanguageModelImpl::forward(const torch::Tensor& tokens, const LstmState&) {
  return run(tokens, nullptr);
}

LanguageModelOutput TransformerLanguageModelImpl::forward_cached(const torch::Tensor& tokens,
                                                                 std::vector<AttentionCache>& cache) {
  return run(tokens, &cache);
}

torch::Tensor TransformerLanguageModelImpl::loss(const torch::Tensor& features, const torch::Tensor& targets) {
  return head.loss(features.reshape({-1, features.size(-1)}), targets.reshape({-1}));
}

torch::Tensor TransformerLanguageModelImpl::log_probs(const torch::Tensor& features) {
  return head.log_probs(features.reshape({-1, features.size(-1)}));
}

std::vector<NamedMoELayer> TransformerLanguageModelImpl::moe_layers() const {
  std::vector<NamedMoELayer> layers;
  for (size_t i = 0; i < blocks.size(); ++i)
    if (blocks[i]->moe) layers.push_back({"blocks." + std::to_string(i) + ".moe", blocks[i]->moe});
  return layers;
}

std::vector<LayerCost> TransformerLanguageModelImpl::costs() const {
  std::vector<LayerCost> rows;
  rows.push_back(dense_cost("embedding", *embedding, 0));
  if (positions) rows.push_back(dense_cost("positions", *positions, 0));
  // A causal window of `context` positions attends (context + 1) / 2 of them on average.
  const int64_t attended = (options.context() + 1) / 2;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const auto& block = blocks[i];
    const std::string prefix = "blocks." + std::to_string(i) + ".";
    auto attention = dense_cost(prefix + "attention", *block->attention, block->attention->flops_per_token(attended));
    // The norms' gains (and biases) are counted with the attention: a handful of parameters, no products.
    attention.params_total += count_parameters(*block->attention_norm) + count_parameters(*block->ffn_norm);
    attention.params_active = attention.params_total;
    rows.push_back(attention);
    if (block->moe)
      rows.push_back({prefix + "moe", block->moe->params_total(), block->moe->params_active_per_token(),
                      block->moe->flops_per_token()});
    else
      rows.push_back(dense_cost(prefix + "dense_ffn", *block->dense, block->dense->flops_per_token()));
  }
  rows.push_back(dense_cost("final_norm", *final_norm, 0));
  for (auto& row : head.costs()) rows.push_back(row);
  return rows;
}

void TransformerLanguageModelImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::TransformerLanguageModel(vocab=" << options.vocab_size() << ", dim=" << options.model_dim()
         << ", layers=" << options.layers() << ", heads=" << options.heads() << ", moe_every=" << options.moe_every()
         << ")";
}

}  // namespace moelab
