#include "moelab/models/model_from_config.h"

#include "moelab/util/error.h"

#include <optional>

namespace moelab {

namespace {
// Window routing in evaluation drops the layer's causal flag, so the language models say it here.
void refuse_soft_moe_in_language_model(const Config& config) {
  if (config.get_int("moe.experts") > 0 && config.get_string("moe.router") == kSoftRouter)
    fail("moe.router = \"soft\" (Soft MoE) mixes later tokens into every slot, and a language model is causal: "
         "use it in an encoder (tagging, QA, the LSTM translation encoder)");
}
// An encoder-decoder's MoE options: moe.decoder_router gives the decoder's layers their own router
// (a Soft MoE encoder cannot lend its router to the causal decoder). Soft MoE layers have nothing to
// balance, cap, jitter or normalise for a router, so those settings then apply to the decoder's
// routed layers alone.
template <typename Options>
void set_translation_moe(Options& options, const Config& config, int64_t model_dim) {
  auto encoder = moe_layer_options(config, model_dim);
  const auto decoder_router = config.get_string("moe.decoder_router");
  if (decoder_router.empty() || decoder_router == encoder.router()) {
    options.moe(encoder);
    return;
  }
  auto decoder = encoder;
  decoder.router(decoder_router);
  if (encoder.router() == kSoftRouter)
    encoder.balance(BalanceWeights{}).capacity_factor(0.0).eval_capacity_factor(-1.0).jitter(0.0).router_norm("none");
  options.moe(encoder).decoder_moe(decoder);
}

}  // namespace

LstmLanguageModelOptions language_model_options(const Config& config, int64_t vocab_size) {
  config.validate();
  refuse_soft_moe_in_language_model(config);
  LstmLanguageModelOptions options(vocab_size, config.get_int("model.embed"), config.get_int("model.hidden"));
  options.layers_before(config.get_int("model.layers_before"))
      .layers_after(config.get_int("model.layers_after"))
      .dropout(config.get_float("model.dropout"))
      .residual(config.get_bool("model.residual"))
      .middle_norm(config.get_string("model.middle_norm"))
      .deep_layers(config.get_int("moe.deep_layers"))
      .deep_hidden(config.get_int("moe.deep_hidden"))
      .tie_weights(config.get_bool("model.tie_weights"))
      .softmax(config.get_string("model.softmax"))
      .adaptive_cutoffs(config.get_int_list("model.adaptive_cutoffs"));
  const int64_t experts = config.get_int("moe.experts");
  if (experts == 0) {
    options.middle("none");
    return options;
  }
  options.middle(config.get_string("moe.layer"));
  // A language model is causal: its evaluation must not route by later tokens.
  options.moe(moe_layer_options(config, config.get_int("model.hidden")).causal(!config.get_bool("debug.window_routing_in_eval")));
  return options;
}

MoELayerOptions moe_layer_options(const Config& config, int64_t model_dim) {
  // Fine-grained experts: m times the experts at 1/m the width, m times the slots per token, so
  // parameters and expert FLOPs per token stay those of the coarse layer.
  const int64_t granularity = config.get_int("moe.granularity");
  MoELayerOptions moe(model_dim, config.get_int("moe.experts") * granularity, config.get_int("moe.k") * granularity,
                      config.get_int("moe.expert_hidden") / granularity);
  BalanceWeights balance;
  balance.importance = config.get_float("moe.balance.importance");
  balance.load = config.get_float("moe.balance.load");
  balance.switch_loss = config.get_float("moe.balance.switch");
  balance.z = config.get_float("moe.balance.z");
  balance.sequence = config.get_float("moe.balance.sequence");
  moe.router(config.get_string("moe.router"))
      .soft_slots(config.get_int("moe.soft_slots"))
      .bank(config.get_string("moe.bank"))
      .rank(config.get_int("moe.rank"))
      .freeze_base(config.get_bool("moe.freeze_base"))
      .model_factors(config.get_int_list("moe.model_factors"))
      .hidden_factors(config.get_int_list("moe.hidden_factors"))
      .bond(config.get_int("moe.bond"))
      .central_update_p(config.get_float("moe.central_update_p"))
      .shared_experts(config.get_int("moe.shared_experts"))
      .expert_dropout(config.get_float("moe.expert_dropout"))
      .capacity_factor(config.get_float("moe.capacity_factor"))
      .eval_capacity_factor(config.get_float("moe.eval_capacity_factor"))
      .capacity_drop(parse_drop_policy(config.get_string("moe.capacity_drop")))
      .noisy(config.get_bool("moe.noisy"))
      .noise_epsilon(config.get_float("moe.noise_epsilon"))
      .jitter(config.get_float("moe.jitter"))
      .router_norm(config.get_string("moe.router_norm"))
      .groups(config.get_int("moe.groups"))
      .group_k(config.get_int("moe.group_k"))
      .affinity(config.get_string("moe.affinity"))
      .route_scale(config.get_float("moe.route_scale"))
      .bias_update_rate(config.get_float("moe.bias_update_rate"))
      .relu_l1_init(config.get_float("moe.relu_l1_init"))
      .relu_l1_rate(config.get_float("moe.relu_l1_rate"))
      .null_experts(config.get_int("moe.null_experts"))
      .balance(balance);
  // Expert parallelism only means something with several processes; one process keeps every
  // expert, so `moelab eval` of an expert-parallel run needs no launcher.
  if (config.get_string("moe.parallel") == "expert" && world()->world_size() > 1) moe.expert_group(world());
  // Global-batch balancing pools the expert sums of every rank (data or expert parallel alike).
  moe.global_balance(config.get_string("moe.balance.scope") == "global");
  if (moe.global_balance() && world()->world_size() > 1) moe.balance_group(world());
  return moe;
}

LstmLanguageModel build_language_model(const Config& config, int64_t vocab_size) {
  return LstmLanguageModel(language_model_options(config, vocab_size));
}

AttentionKernel parse_attention_kernel(const std::string& name) {
  if (name == "fused") return AttentionKernel::kFused;
  if (name == "plain") return AttentionKernel::kPlain;
  return AttentionKernel::kAuto;
}

namespace {

// model.ffn_dropout, where it is set apart from model.dropout.
std::optional<double> ffn_dropout(const Config& config) {
  const double value = config.get_float("model.ffn_dropout");
  if (value < 0) return std::nullopt;
  return value;
}

// The keys every Transformer (language model or encoder-decoder) reads for its blocks.
template <typename Options>
void set_block_options(Options& options, const Config& config) {
  options.heads(config.get_int("model.heads"))
      .context(config.get_int("model.context"))
      .positions(config.get_string("model.positions"))
      .norm(config.get_string("model.norm"))
      .ffn_hidden(transformer_ffn_hidden(config))
      .dropout(config.get_float("model.dropout"))
      .ffn_dropout(ffn_dropout(config))
      .attention(parse_attention_kernel(config.get_string("model.attention")));
}

}  // namespace

TransformerLanguageModelOptions transformer_options(const Config& config, int64_t vocab_size) {
  config.validate();
  refuse_soft_moe_in_language_model(config);
  const int64_t d = config.get_int("model.hidden");
  TransformerLanguageModelOptions options(vocab_size, d);
  set_block_options(options, config);
  options.layers(config.get_int("model.layers"))
      .tie_weights(config.get_bool("model.tie_weights"))
      .softmax(config.get_string("model.softmax"))
      .adaptive_cutoffs(config.get_int_list("model.adaptive_cutoffs"));
  if (config.get_int("moe.experts") == 0 || config.get_string("moe.layer") == "dense") {
    options.moe_every(0);
    return options;
  }
  options.moe_every(config.get_int("moe.every"))
      .moe(moe_layer_options(config, d).causal(!config.get_bool("debug.window_routing_in_eval")));
  return options;
}

int64_t transformer_ffn_hidden(const Config& config) {
  const int64_t ffn_hidden = config.get_int("model.ffn_hidden");
  return ffn_hidden > 0 ? ffn_hidden : config.get_int("moe.k") * config.get_int("moe.expert_hidden");
}

LanguageModelPtr make_language_model(const Config& config, int64_t vocab_size) {
  if (config.get_string("model.arch") == "transformer")
    return TransformerLanguageModel(transformer_options(config, vocab_size)).ptr();
  return build_language_model(config, vocab_size).ptr();
}

int64_t language_model_window(const Config& config) {
  return config.get_string("model.arch") == "transformer" ? config.get_int("model.context") : config.get_int("train.bptt");
}

TransformerTranslationOptions transformer_translation_options(const Config& config, int64_t source_vocab,
                                                              int64_t target_vocab) {
  config.validate();
  const int64_t d = config.get_int("model.hidden");
  TransformerTranslationOptions options(source_vocab, target_vocab, d);
  set_block_options(options, config);
  options.encoder_layers(config.get_int("model.encoder_layers"))
      .decoder_layers(config.get_int("model.decoder_layers"))
      .share_embeddings(config.get_bool("model.share_embeddings"));
  if (config.get_int("moe.experts") == 0 || config.get_string("moe.layer") == "dense") {
    options.moe_every(0);
    return options;
  }
  // The blocks set causal routing in the decoder's MoE layers and not in the encoder's.
  options.moe_every(config.get_int("moe.every"));
  set_translation_moe(options, config, d);
  return options;
}

TranslationModelPtr make_translation_model(const Config& config, int64_t source_vocab, int64_t target_vocab) {
  if (config.get_string("model.arch") == "transformer")
    return TransformerTranslationModel(transformer_translation_options(config, source_vocab, target_vocab)).ptr();
  LstmTranslationOptions options(source_vocab, target_vocab, config.get_int("model.embed"), config.get_int("model.hidden"));
  options.encoder_layers(config.get_int("model.encoder_layers"))
      .decoder_layers(config.get_int("model.decoder_layers"))
      .dropout(config.get_float("model.dropout"))
      .ffn_dropout(ffn_dropout(config))
      .share_embeddings(config.get_bool("model.share_embeddings"))
      .nominal_source_length((config.get_int("model.context") + 1) / 2);
  if (config.get_int("moe.experts") > 0) {
    options.moe_encoder_after(config.get_int_list("moe.encoder_layers"))
        .moe_decoder_after(config.get_int_list("moe.decoder_layers"));
    if (config.get_string("moe.layer") == "dense")
      options.ffn_hidden(transformer_ffn_hidden(config));
    else
      set_translation_moe(options, config, config.get_int("model.hidden"));
  }
  return LstmTranslationModel(options).ptr();
}

BiLstmMoEEncoderOptions encoder_options(const Config& config, int64_t vocab_size) {
  config.validate();
  BiLstmMoEEncoderOptions options(vocab_size, config.get_int("model.embed"), config.get_int("model.hidden"));
  options.dropout(config.get_float("model.dropout"))
      .residual(config.get_bool("model.residual"))
      .freeze_embeddings(config.get_bool("model.freeze_embeddings"));
  if (config.get_int("model.char_embed") > 0)
    options.chars(CharWordEncoderOptions(config.get_int("model.char_embed"), config.get_int("model.char_hidden"))
                      .kind(config.get_string("model.char_encoder")));
  if (config.get_int("moe.experts") == 0) {
    options.middle("none");
    return options;
  }
  options.middle(config.get_string("moe.layer"));
  options.moe(moe_layer_options(config, 2 * config.get_int("model.hidden")));
  return options;
}

}  // namespace moelab
