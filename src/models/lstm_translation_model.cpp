#include "moelab/models/lstm_translation_model.h"

#include <torch/nn/utils/rnn.h>

#include <limits>

#include "moelab/layers/moe_on_tokens.h"
#include "moelab/util/error.h"
#include "moelab/util/parameter_count.h"

namespace moelab {

namespace {

using LstmStates = std::vector<std::tuple<torch::Tensor, torch::Tensor>>;

// A residual connection joins layers from the third on (GNMT): the lower ones learn unaided.
bool residual_at(size_t layer) { return layer >= 2; }

// The memory in batch-major form, [B, S, H], and the bilinear keys W m.
struct LstmDecoderState : DecoderState {
  torch::Tensor memory, keys, key_padding;  // [B, S, H], [B, S, H], [B, S]
  LstmStates states;                         // per layer, each [1, B, H]
  void select(const torch::Tensor& rows) override {
    memory = memory.index_select(0, rows);
    keys = keys.index_select(0, rows);
    key_padding = key_padding.index_select(0, rows);
    for (auto& [h, c] : states)
      if (h.defined()) {
        h = h.index_select(1, rows);
        c = c.index_select(1, rows);
      }
  }
  int64_t batch_size() const override { return memory.size(0); }
};

// softmax over unpadded source positions of query . key -> context [T, B, H]; query [T, B, H].
torch::Tensor attend(const torch::Tensor& query, const torch::Tensor& memory, const torch::Tensor& keys,
                     const torch::Tensor& key_padding) {
  auto scores = torch::bmm(query.transpose(0, 1), keys.transpose(1, 2));  // [B, T, S]
  scores = scores.masked_fill(key_padding.unsqueeze(1), -std::numeric_limits<double>::infinity());
  return torch::bmm(torch::softmax(scores, -1), memory).transpose(0, 1);  // [T, B, H]
}

MoEOutput moe_residual(MoELayer& moe, torch::Tensor& x, const torch::Tensor& tokens, const torch::Tensor& padding) {
  const auto shape = x.sizes().vec();
  auto out = moe_on_tokens(moe, x, tokens, padding);
  x = x + out.output.view(shape);
  return out;
}

}  // namespace

LstmTranslationModelImpl::LstmTranslationModelImpl(const LstmTranslationOptions& options_) : options(options_) {
  const int64_t e = options.embed(), h = options.hidden();
  if (h % 2 != 0) fail("model.hidden = {} must be even: the first encoder layer has hidden / 2 per direction", h);
  if (options.encoder_layers() < 1 || options.decoder_layers() < 1)
    fail("model.encoder_layers and model.decoder_layers must be >= 1, got {} and {}", options.encoder_layers(),
         options.decoder_layers());
  if (options.share_embeddings() && options.source_vocab() != options.target_vocab())
    fail("shared embeddings need one vocabulary; the source has {} entries, the target {}", options.source_vocab(),
         options.target_vocab());
  source_embedding = register_module("source_embedding", torch::nn::Embedding(options.source_vocab(), e));
  target_embedding = options.share_embeddings()
                         ? source_embedding
                         : register_module("target_embedding", torch::nn::Embedding(options.target_vocab(), e));
  encoder_list = register_module("encoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.encoder_layers(); ++i) {
    auto lstm = i == 0 ? torch::nn::LSTM(torch::nn::LSTMOptions(e, h / 2).bidirectional(true))
                       : torch::nn::LSTM(torch::nn::LSTMOptions(h, h));
    encoder.push_back(lstm);
    encoder_list->push_back(lstm);
  }
  decoder_list = register_module("decoder", torch::nn::ModuleList());
  for (int64_t i = 0; i < options.decoder_layers(); ++i) {
    auto lstm = torch::nn::LSTM(torch::nn::LSTMOptions(i == 0 ? e : 2 * h, h));
    decoder.push_back(lstm);
    decoder_list->push_back(lstm);
  }
  auto add_moe = [&](const std::vector<int64_t>& after, int64_t layers, const char* side, bool causal,
                     std::map<int64_t, MoELayer>& out) {
    for (const int64_t layer : after) {
      if (layer < 1 || layer >= layers)
        fail("an MoE layer after {} layer {} must sit between two of its {} LSTM layers", side, layer, layers);
      if (options.ffn_hidden() > 0) {
        const auto ffn_options =
            DenseFfnOptions(h, options.ffn_hidden()).hidden_dropout(options.ffn_dropout().value_or(options.dropout()));
        (side == std::string("encoder") ? encoder_ffn : decoder_ffn)
            .insert_or_assign(layer, register_module(fmt::format("{}_ffn_{}", side, layer), DenseFfn(ffn_options)));
        continue;
      }
      if (!options.moe()) fail("MoE layers in the {} need MoE options", side);
      auto moe_options = causal && options.decoder_moe() ? *options.decoder_moe() : *options.moe();
      moe_options.model_dim(h).causal(causal);
      out.insert_or_assign(layer, register_module(fmt::format("{}_moe_{}", side, layer), MoELayer(moe_options)));
    }
  };
  add_moe(options.moe_encoder_after(), options.encoder_layers(), "encoder", /*causal=*/false, encoder_moe);
  add_moe(options.moe_decoder_after(), options.decoder_layers(), "decoder", /*causal=*/true, decoder_moe);
  attention_weight = register_module("attention_weight", torch::nn::Linear(torch::nn::LinearOptions(h, h).bias(false)));
  attentional = register_module("attentional", torch::nn::Linear(2 * h, e));
  head = SoftmaxOutput(*this, {e, options.target_vocab(), "full", {}, /*tied=*/true}, target_embedding);
  dropout = register_module("dropout", Dropout(options.dropout()));
  // GNMT's initialisation, U(-0.1, 0.1); MoE and dense FFN layers keep their own.
  torch::NoGradGuard no_grad;
  for (auto& item : named_parameters())
    if (item.key().find("_moe_") == std::string::npos && item.key().find("_ffn_") == std::string::npos)
      item.value().uniform_(-0.1, 0.1);
}

EncodedSource LstmTranslationModelImpl::encode(const torch::Tensor& source, const torch::Tensor& source_lengths) {
  TORCH_CHECK(source.dim() == 2, "the encoder expects source [S, B], got ", source.sizes());
  const int64_t s = source.size(0);
  EncodedSource out;
  const auto padding = padding_mask(s, source_lengths.to(source.device()));  // [S, B]
  out.key_padding = padding.t().contiguous();
  const auto flat_padding = padding.reshape({-1});
  auto x = dropout(source_embedding(source));
  for (size_t i = 0; i < encoder.size(); ++i) {
    torch::Tensor y;
    if (i == 0) {
      // Packed, so the backward direction starts at each sentence's own last token, not at padding.
      namespace rnn = torch::nn::utils::rnn;
      const auto packed = rnn::pack_padded_sequence(x, source_lengths.to(torch::kCPU), /*batch_first=*/false,
                                                    /*enforce_sorted=*/false);
      y = std::get<0>(rnn::pad_packed_sequence(std::get<0>(encoder[i]->forward_with_packed_input(packed)),
                                               /*batch_first=*/false, /*padding_value=*/0.0, s));
    } else {
      // Padding sits after every real token: a forward LSTM's real positions never see it.
      y = std::get<0>(encoder[i](dropout(x)));
    }
    x = residual_at(i) ? x + y : y;
    const auto moe = encoder_moe.find(static_cast<int64_t>(i) + 1);
    if (moe != encoder_moe.end()) out.moe.add(moe_residual(moe->second, x, source, flat_padding));
    const auto ffn = encoder_ffn.find(static_cast<int64_t>(i) + 1);
    if (ffn != encoder_ffn.end()) x = x + ffn->second(x);
  }
  out.memory = x;
  return out;
}

torch::Tensor LstmTranslationModelImpl::run_decoder(const torch::Tensor& embedded, const torch::Tensor& tokens,
                                                    const torch::Tensor& padding, const torch::Tensor& memory,
                                                    const torch::Tensor& keys, const torch::Tensor& key_padding,
                                                    LstmStates* states, RoutingOutput& moe_out) {
  auto run_layer = [&](size_t i, const torch::Tensor& input) {
    if (!states) return std::get<0>(decoder[i](input));
    auto& state = (*states)[i];
    auto [y, next] = std::get<0>(state).defined() ? decoder[i](input, state) : decoder[i](input);
    state = next;
    return y;
  };
  auto x = run_layer(0, embedded);
  const auto context = attend(x, memory, keys, key_padding);  // [T, B, H]
  for (size_t i = 0; i < decoder.size(); ++i) {
    if (i > 0) {
      const auto y = run_layer(i, dropout(torch::cat({x, context}, -1)));
      x = residual_at(i) ? x + y : y;
    }
    const auto moe = decoder_moe.find(static_cast<int64_t>(i) + 1);
    if (moe != decoder_moe.end()) moe_out.add(moe_residual(moe->second, x, tokens, padding));
    const auto ffn = decoder_ffn.find(static_cast<int64_t>(i) + 1);
    if (ffn != decoder_ffn.end()) x = x + ffn->second(x);
  }
  return torch::tanh(attentional(dropout(torch::cat({x, context}, -1))));
}

DecoderOutput LstmTranslationModelImpl::decode(const EncodedSource& encoded, const torch::Tensor& target_input,
                                               const torch::Tensor& target_padding) {
  DecoderOutput out;
  const auto memory = encoded.memory.transpose(0, 1);  // [B, S, H]
  out.features = run_decoder(dropout(target_embedding(target_input)), target_input, target_padding.reshape({-1}),
                             memory, attention_weight(memory), encoded.key_padding, nullptr, out.moe);
  return out;
}

std::unique_ptr<DecoderState> LstmTranslationModelImpl::start_decoding(const EncodedSource& encoded) {
  auto state = std::make_unique<LstmDecoderState>();
  state->memory = encoded.memory.transpose(0, 1).contiguous();
  state->keys = attention_weight(state->memory);
  state->key_padding = encoded.key_padding;
  state->states.resize(decoder.size());
  return state;
}

torch::Tensor LstmTranslationModelImpl::decode_step(DecoderState& state_base, const torch::Tensor& tokens) {
  auto& state = dynamic_cast<LstmDecoderState&>(state_base);
  const auto input = tokens.view({1, -1});
  RoutingOutput ignored;
  const auto features = run_decoder(dropout(target_embedding(input)), input, {}, state.memory, state.keys,
                                    state.key_padding, &state.states, ignored);
  return log_probs(features.squeeze(0));
}

torch::Tensor LstmTranslationModelImpl::log_probs(const torch::Tensor& features) {
  return head.log_probs(features.reshape({-1, features.size(-1)}));
}

std::vector<NamedMoELayer> LstmTranslationModelImpl::moe_layers() const {
  std::vector<NamedMoELayer> layers;
  for (const auto& [layer, moe] : encoder_moe) layers.push_back({fmt::format("encoder_moe_{}", layer), moe});
  for (const auto& [layer, moe] : decoder_moe) layers.push_back({fmt::format("decoder_moe_{}", layer), moe});
  return layers;
}

std::vector<LayerCost> LstmTranslationModelImpl::costs() const {
  // FLOPs per token of the row's own side (encoder rows per source token, decoder rows per target token).
  std::vector<LayerCost> rows;
  rows.push_back(dense_cost("source_embedding", *source_embedding, 0));
  if (!options.share_embeddings()) rows.push_back(dense_cost("target_embedding", *target_embedding, 0));
  auto moe_row = [](const std::string& name, const MoELayer& moe) -> LayerCost {
    return {name, moe->params_total(), moe->params_active_per_token(), moe->flops_per_token()};
  };
  auto side_rows = [&](const char* side, const std::vector<torch::nn::LSTM>& layers,
                       const std::map<int64_t, MoELayer>& moes, const std::map<int64_t, DenseFfn>& ffns) {
    for (size_t i = 0; i < layers.size(); ++i) {
      rows.push_back(dense_cost(fmt::format("{}.{}", side, i), *layers[i], lstm_flops(layers[i])));
      const int64_t after = static_cast<int64_t>(i) + 1;
      if (moes.count(after)) rows.push_back(moe_row(fmt::format("{}_moe_{}", side, after), moes.at(after)));
      if (ffns.count(after))
        rows.push_back(dense_cost(fmt::format("{}_ffn_{}", side, after), *ffns.at(after), ffns.at(after)->flops_per_token()));
    }
  };
  side_rows("encoder", encoder, encoder_moe, encoder_ffn);
  side_rows("decoder", decoder, decoder_moe, decoder_ffn);
  // Per target token: the bilinear score's W applied to each of `nominal_source_length` keys once
  // per sentence (counted per target token, source and target being about as long), the scores and
  // the weighted sum, and the attentional layer.
  const int64_t h = options.hidden(), s = options.nominal_source_length();
  rows.push_back(dense_cost("decoder.attention", *attention_weight, 2 * h * h + 4 * s * h));
  rows.push_back(dense_cost("decoder.attentional", *attentional, 2 * attentional->weight.numel()));
  for (auto& row : head.costs()) rows.push_back(row);
  return rows;
}

void LstmTranslationModelImpl::pretty_print(std::ostream& stream) const {
  stream << "moelab::LstmTranslationModel(embed=" << options.embed() << ", hidden=" << options.hidden()
         << ", encoder_layers=" << options.encoder_layers() << ", decoder_layers=" << options.decoder_layers()
         << ", encoder MoE layers " << encoder_moe.size() << ", decoder MoE layers " << decoder_moe.size() << ")";
}

}  // namespace moelab
