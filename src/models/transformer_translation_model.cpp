#include "moelab/models/transformer_translation_model.h"

#include <cmath>

#include "moelab/layers/moe_on_tokens.h"
#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

namespace {

// A block's FFN sublayer: its norm, an MoE layer or a dense FFN, and the block's dropout. The
// decoder's routing in evaluation must not see later target positions (MoELayerOptions::causal).
void register_ffn(torch::nn::Module& block, const TransformerTranslationOptions& options, bool with_moe, bool causal,
                  Norm& ffn_norm, MoELayer& moe, DenseFfn& dense, Dropout& dropout) {
  const int64_t d = options.model_dim();
  ffn_norm = block.register_module("ffn_norm", Norm(options.norm(), d));
  if (with_moe) {
    auto moe_options = causal && options.decoder_moe() ? *options.decoder_moe() : *options.moe();
    moe = block.register_module("moe", MoELayer(moe_options.model_dim(d).causal(causal)));
  } else {
    const double ffn_dropout = options.ffn_dropout().value_or(options.dropout());
    dense = block.register_module("dense",
                                  DenseFfn(DenseFfnOptions(d, options.ffn_hidden()).hidden_dropout(ffn_dropout)));
  }
  dropout = block.register_module("dropout", Dropout(options.dropout()));
}

FeedForwardResult feed_forward(MoELayer& moe, DenseFfn& dense, const torch::Tensor& x, const torch::Tensor& token_ids,
                               const torch::Tensor& padding) {
  FeedForwardResult out;
  if (moe) {
    out.moe = moe_on_tokens(moe, x, token_ids, padding);
    out.y = out.moe->output;
  } else {
    out.y = dense(x.reshape({-1, x.size(-1)}));
  }
  return out;
}

// The FFN sublayer with its residual: x [L, B, D].
torch::Tensor ffn_residual(MoELayer& moe, DenseFfn& dense, Norm& norm, Dropout& dropout,
                           const torch::Tensor& x, const torch::Tensor& token_ids, const torch::Tensor& padding,
                           RoutingOutput& moe_out) {
  const auto shape = x.sizes().vec();
  auto out = feed_forward(moe, dense, norm(x), token_ids, padding);
  if (out.moe) moe_out.add(*out.moe);
  return x + dropout(out.y.view(shape));
}

class TransformerDecoderState : public DecoderState {
 public:
  std::vector<AttentionMemory> memories;  // per decoder block
  std::vector<AttentionCache> caches;     // per decoder block
  int64_t position = 0;

  void select(const torch::Tensor& rows) override {
    for (auto& memory : memories) memory = memory.select(rows);
    for (auto& cache : caches)
      if (cache.keys.defined()) {
        cache.keys = cache.keys.index_select(0, rows);
        cache.values = cache.values.index_select(0, rows);
      }
  }
  int64_t batch_size() const override { return memories.front().keys.size(0); }
};

}  // namespace

TransformerEncoderBlockImpl::TransformerEncoderBlockImpl(const TransformerTranslationOptions& options, bool with_moe) {
  const int64_t d = options.model_dim();
  attention_norm = register_module("attention_norm", Norm(options.norm(), d));
  attention = register_module("attention", MultiHeadAttention(MultiHeadAttentionOptions(d, options.heads())
                                                                  .rotary(options.positions() == "rope")
                                                                  .kernel(options.attention())));
  register_ffn(*this, options, with_moe, /*causal=*/false, ffn_norm, moe, dense, dropout);
}

torch::Tensor TransformerEncoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& token_ids,
                                                   const torch::Tensor& key_padding, RoutingOutput& moe_out) {
  const auto h = x + dropout(attention->attend_self(attention_norm(x), key_padding));
  // [B, S] -> [S*B], the order of the flattened positions.
  return ffn_residual(moe, dense, ffn_norm, dropout, h, token_ids, key_padding.t().reshape({-1}), moe_out);
}

TransformerDecoderBlockImpl::TransformerDecoderBlockImpl(const TransformerTranslationOptions& options, bool with_moe) {
  const int64_t d = options.model_dim();
  attention_norm = register_module("attention_norm", Norm(options.norm(), d));
  attention = register_module("attention", CausalSelfAttention(CausalSelfAttentionOptions(d, options.heads())
                                                                   .rotary(options.positions() == "rope")
                                                                   .kernel(options.attention())));
  cross_norm = register_module("cross_norm", Norm(options.norm(), d));
  cross_attention = register_module(
      "cross_attention", MultiHeadAttention(MultiHeadAttentionOptions(d, options.heads()).kernel(options.attention())));
  register_ffn(*this, options, with_moe, /*causal=*/true, ffn_norm, moe, dense, dropout);
}

torch::Tensor TransformerDecoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& token_ids,
                                                   const torch::Tensor& padding, const AttentionMemory& memory,
                                                   AttentionCache* cache, RoutingOutput& moe_out) {
  auto h = x + dropout(attention(attention_norm(x), cache));
  h = h + dropout(cross_attention(cross_norm(h), memory));
  return ffn_residual(moe, dense, ffn_norm, dropout, h, token_ids, padding, moe_out);
}

TransformerTranslationModelImpl::TransformerTranslationModelImpl(const TransformerTranslationOptions& options_)
    : options(options_) {
  const int64_t d = options.model_dim();
  if (options.source_vocab() < 2 || options.target_vocab() < 2)
    fail("the vocabularies need at least 2 entries, got {} and {}", options.source_vocab(), options.target_vocab());
  if (options.encoder_layers() < 1 || options.decoder_layers() < 1)
    fail("model.encoder_layers and model.decoder_layers must be >= 1, got {} and {}", options.encoder_layers(),
         options.decoder_layers());
  if (options.context() < 1) fail("model.context must be >= 1, got {}", options.context());
  if (options.positions() != "learned" && options.positions() != "rope")
    fail("unknown model.positions '{}' (known: learned, rope)", options.positions());
  if (options.moe_every() > 0 && !options.moe()) fail("moe_every = {} needs MoE options", options.moe_every());
  if (options.share_embeddings() && options.source_vocab() != options.target_vocab())
    fail("shared embeddings need one vocabulary; the source has {} entries, the target {}", options.source_vocab(),
         options.target_vocab());

  source_embedding = register_module("source_embedding", torch::nn::Embedding(options.source_vocab(), d));
  target_embedding = options.share_embeddings()
                         ? source_embedding
                         : register_module("target_embedding", torch::nn::Embedding(options.target_vocab(), d));
  if (positions_learned()) {
    source_positions = register_module("source_positions", torch::nn::Embedding(options.context(), d));
    target_positions = register_module("target_positions", torch::nn::Embedding(options.context(), d));
  }
  dropout = register_module("dropout", Dropout(options.dropout()));
  auto has_moe = [&](int64_t i) { return options.moe_every() > 0 && (i + 1) % options.moe_every() == 0; };
  encoder_list = register_module("encoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.encoder_layers(); ++i) {
    encoder.push_back(TransformerEncoderBlock(options, has_moe(i)));
    encoder_list->push_back(encoder.back());
  }
  decoder_list = register_module("decoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.decoder_layers(); ++i) {
    decoder.push_back(TransformerDecoderBlock(options, has_moe(i)));
    decoder_list->push_back(decoder.back());
  }
  encoder_norm = register_module("encoder_norm", Norm(options.norm(), d));
  decoder_norm = register_module("decoder_norm", Norm(options.norm(), d));
  head = SoftmaxOutput(*this, {d, options.target_vocab(), "full", {}, /*tied=*/true}, target_embedding);

  // GPT-2's initialisation, as the Transformer language model: N(0, 0.02), and the projections that
  // write into the residual stream scaled by 1/sqrt(2 * blocks of that stack).
  torch::NoGradGuard no_grad;
  auto init = [](torch::nn::Linear& linear, double std) {
    linear->weight.normal_(0.0, std);
    linear->bias.zero_();
  };
  source_embedding->weight.normal_(0.0, 0.02);
  target_embedding->weight.normal_(0.0, 0.02);
  if (source_positions) {
    source_positions->weight.normal_(0.0, 0.02);
    target_positions->weight.normal_(0.0, 0.02);
  }
  const double encoder_residual = 0.02 / std::sqrt(2.0 * static_cast<double>(options.encoder_layers()));
  for (auto& block : encoder) {
    init(block->attention->query, 0.02);
    init(block->attention->key_value, 0.02);
    init(block->attention->project, encoder_residual);
    if (block->dense) {
      init(block->dense->up, 0.02);
      init(block->dense->down, encoder_residual);
    }
  }
  const double decoder_residual = 0.02 / std::sqrt(3.0 * static_cast<double>(options.decoder_layers()));
  for (auto& block : decoder) {
    init(block->attention->qkv, 0.02);
    init(block->attention->project, decoder_residual);
    init(block->cross_attention->query, 0.02);
    init(block->cross_attention->key_value, 0.02);
    init(block->cross_attention->project, decoder_residual);
    if (block->dense) {
      init(block->dense->up, 0.02);
      init(block->dense->down, decoder_residual);
    }
  }
}

EncodedSource TransformerTranslationModelImpl::encode(const torch::Tensor& source, const torch::Tensor& source_lengths) {
  TORCH_CHECK(source.dim() == 2, "the encoder expects source [S, B], got ", source.sizes());
  const int64_t s = source.size(0);
  if (source_positions && s > options.context())
    fail("a source sentence of {} tokens exceeds model.context = {}", s, options.context());
  EncodedSource out;
  out.key_padding = padding_mask(s, source_lengths.to(source.device())).t().contiguous();  // [B, S]
  auto x = source_embedding(source);
  if (source_positions) x = x + source_positions(torch::arange(s, source.options())).unsqueeze(1);
  x = dropout(x);
  const auto token_ids = source.reshape({-1});
  for (auto& block : encoder) x = block(x, token_ids, out.key_padding, out.moe);
  out.memory = encoder_norm(x);
  return out;
}

torch::Tensor TransformerTranslationModelImpl::embed_target(const torch::Tensor& tokens, int64_t first) {
  const int64_t t = tokens.size(0);
  if (target_positions && first + t > options.context())
    fail("a target of {} tokens exceeds model.context = {}", first + t, options.context());
  auto x = target_embedding(tokens);
  if (target_positions) x = x + target_positions(torch::arange(first, first + t, tokens.options())).unsqueeze(1);
  return dropout(x);
}

std::vector<AttentionMemory> TransformerTranslationModelImpl::project_memories(const EncodedSource& encoded) {
  std::vector<AttentionMemory> memories;
  for (auto& block : decoder) memories.push_back(block->cross_attention->project_memory(encoded.memory, encoded.key_padding));
  return memories;
}

torch::Tensor TransformerTranslationModelImpl::run_decoder(torch::Tensor x, const torch::Tensor& tokens,
                                                          const torch::Tensor& padding,
                                                          const std::vector<AttentionMemory>& memories,
                                                          std::vector<AttentionCache>* caches, RoutingOutput& moe_out) {
  const auto token_ids = tokens.reshape({-1});
  for (size_t i = 0; i < decoder.size(); ++i)
    x = decoder[i](x, token_ids, padding, memories[i], caches ? &(*caches)[i] : nullptr, moe_out);
  return decoder_norm(x);
}

DecoderOutput TransformerTranslationModelImpl::decode(const EncodedSource& encoded, const torch::Tensor& target_input,
                                                      const torch::Tensor& target_padding) {
  DecoderOutput out;
  // Padded target positions come after every real one, so the causal mask already keeps them
  // out of the real positions' attention; the FFN leaves them out explicitly.
  out.features = run_decoder(embed_target(target_input, 0), target_input, target_padding.reshape({-1}),
                             project_memories(encoded), nullptr, out.moe);
  return out;
}

std::unique_ptr<DecoderState> TransformerTranslationModelImpl::start_decoding(const EncodedSource& encoded) {
  auto state = std::make_unique<TransformerDecoderState>();
  state->memories = project_memories(encoded);
  state->caches.resize(decoder.size());
  return state;
}

torch::Tensor TransformerTranslationModelImpl::decode_step(DecoderState& state_base, const torch::Tensor& tokens) {
  auto& state = dynamic_cast<TransformerDecoderState&>(state_base);
  const auto input = tokens.view({1, -1});
  RoutingOutput ignored;
  const auto features = run_decoder(embed_target(input, state.position), input, {}, state.memories, &state.caches, ignored);
  ++state.position;
  return log_probs(features.squeeze(0));
}

torch::Tensor TransformerTranslationModelImpl::log_probs(const torch::Tensor& features) {
  return head.log_probs(features.reshape({-1, features.size(-1)}));
}

std::vector<NamedMoELayer> TransformerTranslationModelImpl::moe_layers() const {
  std::vector<NamedMoELayer> layers;
  for (size_t i = 0; i < encoder.size(); ++i)
    if (encoder[i]->moe) layers.push_back({"encoder." + std::to_string(i) + ".moe", encoder[i]->moe});
  for (size_t i = 0; i < decoder.size(); ++i)
    if (decoder[i]->moe) layers.push_back({"decoder." + std::to_string(i) + ".moe", decoder[i]->moe});
  return layers;
}

std::vector<LayerCost> TransformerTranslationModelImpl::costs() const {
  // FLOPs are per token of the row's own side (encoder rows per source token, decoder rows and the
  // output layer per target token); attention attends half the context on average.
  const int64_t attended = (options.context() + 1) / 2;
  std::vector<LayerCost> rows;
  rows.push_back(dense_cost("source_embedding", *source_embedding, 0));
  if (!options.share_embeddings()) rows.push_back(dense_cost("target_embedding", *target_embedding, 0));
  if (source_positions) {
    rows.push_back(dense_cost("source_positions", *source_positions, 0));
    rows.push_back(dense_cost("target_positions", *target_positions, 0));
  }
  auto ffn_row = [](const std::string& prefix, const MoELayer& moe, const DenseFfn& dense) -> LayerCost {
    if (moe) return {prefix + "moe", moe->params_total(), moe->params_active_per_token(), moe->flops_per_token()};
    return dense_cost(prefix + "dense_ffn", *dense, dense->flops_per_token());
  };
  for (size_t i = 0; i < encoder.size(); ++i) {
    const auto& block = encoder[i];
    const std::string prefix = "encoder." + std::to_string(i) + ".";
    auto attention = dense_cost(prefix + "attention", *block->attention, block->attention->flops_per_token(attended));
    attention.params_total += count_parameters(*block->attention_norm) + count_parameters(*block->ffn_norm);
    attention.params_active = attention.params_total;
    rows.push_back(attention);
    rows.push_back(ffn_row(prefix, block->moe, block->dense));
  }
  for (size_t i = 0; i < decoder.size(); ++i) {
    const auto& block = decoder[i];
    const std::string prefix = "decoder." + std::to_string(i) + ".";
    auto attention = dense_cost(prefix + "attention", *block->attention, block->attention->flops_per_token(attended));
    attention.params_total += count_parameters(*block->attention_norm) + count_parameters(*block->cross_norm) +
                              count_parameters(*block->ffn_norm);
    attention.params_active = attention.params_total;
    rows.push_back(attention);
    // Cross-attention per target token: query and output projections and the attention itself;
    // the keys and values are projected once per source token (counted here as per target token,
    // source and target sentences being about as long).
    rows.push_back(dense_cost(prefix + "cross_attention", *block->cross_attention,
                              block->cross_attention->flops_per_token(attended)));
    rows.push_back(ffn_row(prefix, block->moe, block->dense));
  }
  rows.push_back(dense_cost("norms", *encoder_norm, 0));
  rows.back().params_total += count_parameters(*decoder_norm);
  rows.back().params_active = rows.back().params_total;
  for (auto& row : head.costs()) rows.push_back(row);
  return rows;
}

void TransformerTranslationModelImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::TransformerTranslationModel(source_vocab=" << options.source_vocab()
         << ", target_vocab=" << options.target_vocab() << ", dim=" << options.model_dim()
         << ", encoder_layers=" << options.encoder_layers() << ", decoder_layers=" << options.decoder_layers()
         << ", heads=" << options.heads() << ", moe_every=" << options.moe_every() << ")";
}

}  // namespace moelab
