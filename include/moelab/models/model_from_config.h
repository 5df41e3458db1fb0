// Builds models from a resolved Config, so the CLI, the tests and later tools agree on what each
// key means.
#pragma once
#include "moelab/config/config.h"
#include "moelab/models/bilstm_moe_encoder.h"
#include "moelab/models/lstm_language_model.h"
#include "moelab/models/lstm_translation_model.h"
#include "moelab/models/transformer_language_model.h"
#include "moelab/models/transformer_translation_model.h"

namespace moelab {

// The MoE layer keys (moe.*) for a layer of width model_dim.
MoELayerOptions moe_layer_options(const Config& config, int64_t model_dim);

LstmLanguageModelOptions language_model_options(const Config& config, int64_t vocab_size);
LstmLanguageModel build_language_model(const Config& config, int64_t vocab_size);

TransformerLanguageModelOptions transformer_options(const Config& config, int64_t vocab_size);
// Hidden width of the Transformer's dense FFN blocks: model.ffn_hidden, or moe.k * moe.expert_hidden
// (the MoE layer's active width) when that is 0.
int64_t transformer_ffn_hidden(const Config& config);
AttentionKernel parse_attention_kernel(const std::string& name);

// The backbone model.arch names (lstm or transformer), built on the CPU.
LanguageModelPtr make_language_model(const Config& config, int64_t vocab_size);
// Tokens per training and evaluation window: train.bptt for the LSTM, model.context for the transformer.
int64_t language_model_window(const Config& config);

// The translation model model.arch names (model.task = "translation"), built on the CPU.
TransformerTranslationOptions transformer_translation_options(const Config& config, int64_t source_vocab,
                                                              int64_t target_vocab);
TranslationModelPtr make_translation_model(const Config& config, int64_t source_vocab, int64_t target_vocab);

// The tagging / QA encoder (model.embed, model.hidden, model.dropout, model.residual,
// model.freeze_embeddings and the moe.* keys) for a vocabulary of vocab_size words.
BiLstmMoEEncoderOptions encoder_options(const Config& config, int64_t vocab_size);

}  // namespace moelab
