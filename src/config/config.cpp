#include "moelab/config/config.h"

#include <fmt/ranges.h>

#include <algorithm>

#include <torch/version.h>

#include "moelab/config/assignment.h"
#include "moelab/device/device.h"
#include "moelab/dispatch/grouped_path.h"
#include "moelab/layers/causal_self_attention.h"
#include "moelab/layers/moe_layer.h"
#include "moelab/routing/router_options.h"
#include "moelab/util/trim.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>

#include "moelab/util/error.h"

namespace moelab {

namespace {

using IntList = std::vector<int64_t>;
using StringList = std::vector<std::string>;

}  // namespace

const std::vector<ConfigKey>& Config::schema() {
  static const std::vector<ConfigKey> keys = {
      {"data.corpus", std::string("kjv"), "\"kjv\" (embedded King James Bible) or a directory with train/valid/test.txt"},
      {"data.min_count", int64_t{1}, "words seen fewer times in train become <unk>"},
      {"data.singleton_unk", 0.0,
       "tagging / qa: chance that a word seen once in train is read as <unk> in a training batch (Lample et al. "
       "2016: 0.5, with data.min_count = 1); 0 = never"},
      {"data.max_vocab", int64_t{0}, "keep at most this many vocabulary entries (0 = all)"},
      {"data.train", std::string(""), "tagging / qa: training file (CoNLL text or SQuAD v1.1 JSON)"},
      {"data.valid", std::string(""), "tagging / qa: validation file"},
      {"data.test", std::string(""),
       "tagging / qa: test file (optional; \"\" = none); translation: the test files' stem in data.corpus, e.g. "
       "test_2016_flickr (\"\" = the first test* pair there, none without test* files)"},
      {"data.embeddings", std::string(""),
       "tagging / qa: GloVe text file (word v1 ... vd; d must equal model.embed); \"\" = learned embeddings"},
      {"data.lowercase", true,
       "tagging / qa: look words up in lower case (GloVe 6B is uncased); character features keep the original case"},
      {"data.max_context_tokens", int64_t{400}, "qa: drop questions whose context is longer (0 = keep all)"},
      {"data.max_question_tokens", int64_t{60}, "qa: drop questions longer than this (0 = keep all)"},
      {"data.src_lang", std::string("de"), "translation: source language, the file suffix (train.de, val.de, test*.de)"},
      {"data.tgt_lang", std::string("en"), "translation: target language"},
      {"data.spm", std::string(""),
       "translation: SentencePiece model of the source (and target) text; \"\" = train a joint one on the training "
       "data (data.spm_vocab, data.spm_type)"},
      {"data.spm_target", std::string(""), "translation: a separate SentencePiece model for the target (\"\" = data.spm's)"},
      {"data.spm_vocab", int64_t{8000}, "translation: vocabulary of the SentencePiece model trained when data.spm = \"\""},
      {"data.spm_type", std::string("bpe"), "translation: bpe or unigram, for the model trained when data.spm = \"\""},
      {"data.max_answer_tokens", int64_t{30},
       "qa: longest answer decoded; longer training answers are dropped (0 = no limit)"},

      {"model.task", std::string("lm"),
       "task: lm (word-level language model), tagging (CoNLL NER) or qa (SQuAD span extraction)"},
      {"model.arch", std::string("lstm"),
       "language-model backbone: lstm (Shazeer et al. 2017) or transformer (decoder-only, pre-norm)"},
      {"model.embed", int64_t{256}, "word embedding width (lstm, tagging, qa; the transformer's is model.hidden)"},
      {"model.hidden", int64_t{256}, "LSTM width, or the transformer's model width; also the MoE layer's width D"},
      {"model.layers", int64_t{4}, "transformer: blocks"},
      {"model.heads", int64_t{4}, "transformer: attention heads (must divide model.hidden)"},
      {"model.context", int64_t{128}, "transformer: window length in tokens, for training and evaluation"},
      {"model.positions", std::string("learned"), "transformer: learned (added embeddings) or rope (rotary)"},
      {"model.norm", std::string("layernorm"), "transformer: layernorm or rmsnorm"},
      {"model.ffn_hidden", int64_t{0},
       "transformer: hidden width of the dense FFN blocks (0 = moe.k * moe.expert_hidden, the MoE layer's active width)"},
      {"model.attention", std::string("auto"),
       "transformer: attention kernel: auto (fused where LibTorch has it), fused (LibTorch >= 2.0) or plain", false},
      {"model.encoder_layers", int64_t{3}, "translation: encoder blocks (transformer) or LSTM layers (lstm)"},
      {"model.decoder_layers", int64_t{3}, "translation: decoder blocks (transformer) or LSTM layers (lstm)"},
      {"model.share_embeddings", true,
       "translation: one embedding table for source and target (needs one SentencePiece model for both)"},
      {"model.layers_before", int64_t{1}, "LSTM layers below the MoE layer"},
      {"model.layers_after", int64_t{1}, "LSTM layers above the MoE layer"},
      {"model.dropout", 0.1, "dropout on embeddings, around the MoE layer and before the softmax"},
      {"model.ffn_dropout", -1.0,
       "transformers and translation: dropout on the dense FFNs' hidden activations (-1 = model.dropout; the "
       "experts' is moe.expert_dropout)"},
      {"model.residual", true, "add the MoE layer's input to its output"},
      {"model.middle_norm", std::string("none"),
       "lstm language model: LayerNorm around the middle layer: none, pre (on its input, inside the residual "
       "branch) or post (after the residual sum)"},
      {"model.char_embed", int64_t{0},
       "tagging / qa: width of the byte embeddings of each word's spelling (0 = no character features)"},
      {"model.char_hidden", int64_t{25}, "tagging / qa: character features per word (cnn: filters; bilstm: per direction)"},
      {"model.char_encoder", std::string("cnn"),
       "tagging / qa: cnn (width-3 convolution, max over the word) or bilstm (last states of both directions)"},
      {"model.decoder", std::string("softmax"),
       "tagging: output layer: softmax (each token's best tag) or crf (linear-chain CRF with the IOB2 constraints, "
       "Viterbi decoding)"},
      {"model.qa_attention", std::string("none"),
       "qa: none (start / end scores straight from the encoder) or bidaf (attention flow between the context and "
       "the question, then a modelling BiLSTM; Seo et al. 2017)"},
      {"model.qa_word_overlap", false,
       "qa: give each token two 0/1 features, whether its word occurs on the other side (question or context) as "
       "spelled and in lower case (DrQA's exact match; Chen et al. 2017)"},
      {"model.freeze_embeddings", false, "tagging / qa: keep the (pretrained) embedding table fixed"},
      {"model.tie_weights", false, "share input embedding and output projection"},
      {"model.softmax", std::string("full"), "output layer: full or adaptive"},
      {"model.adaptive_cutoffs", IntList{2000, 10000}, "adaptive softmax cluster boundaries (ascending)"},

      {"moe.layer", std::string("moe"),
       "middle layer: moe, dense (FFN of width k * expert_hidden, \"MoE-1-Wide\") or deep (lstm language model: "
       "a stack of moe.deep_layers at the dense FFN's FLOPs, \"MoE-1-Deep\")"},
      {"moe.deep_layers", int64_t{4}, "moe.layer = deep: ReLU hidden layers in the stack"},
      {"moe.deep_hidden", int64_t{0},
       "moe.layer = deep: their width (0 = the width at which the stack costs the dense FFN's FLOPs per token)"},
      {"moe.every", int64_t{1},
       "transformer: every n-th block's FFN is an MoE layer (1 = every block, Switch; 2 = every other, GShard/GLaM)"},
      {"moe.encoder_layers", IntList{},
       "translation, lstm: an MoE layer after each of these encoder LSTM layers (1-based; Shazeer 2017 5.3)"},
      {"moe.decoder_layers", IntList{}, "translation, lstm: an MoE layer after each of these decoder LSTM layers"},
      {"moe.experts", int64_t{16}, "number of experts E (0 = no middle layer: plain LSTM)"},
      {"moe.k", int64_t{4}, "experts per token"},
      {"moe.router", std::string("noisy_topk"), "router (see the README's router table); soft = Soft MoE (encoders only)"},
      {"moe.decoder_router", std::string(""),
       "translation: the decoder's MoE router when it differs from moe.router (\"\" = the same; needed by a soft encoder)"},
      {"moe.soft_slots", int64_t{1}, "soft router (Soft MoE): slots per expert, each a weighted average of a sequence"},
      {"moe.bank", std::string("ffn"), "expert kind: ffn, low_rank, shared_projection, lora, mpo or tensor_train"},
      {"moe.rank", int64_t{16},
       "low_rank / shared_projection / lora banks: rank r of the factors, projections or deltas; tensor_train: "
       "largest TT rank"},
      {"moe.freeze_base", false, "lora / tensor_train banks: keep the shared base FFN fixed"},
      {"moe.model_factors", IntList{}, "mpo / tensor_train banks: factors of model.hidden, one per core"},
      {"moe.hidden_factors", IntList{}, "mpo / tensor_train banks: factors of moe.expert_hidden, one per core"},
      {"moe.bond", int64_t{16}, "mpo bank: largest bond dimension of the MPO chains"},
      {"moe.central_update_p", 1.0,
       "mpo bank: fraction of steps in which the shared central cores are updated (gradient mask)"},
      {"moe.shared_experts", int64_t{0}, "always-active shared experts (one FFN of width n * expert_hidden), any bank"},
      {"moe.expert_hidden", int64_t{256}, "hidden width of each expert"},
      {"moe.expert_dropout", 0.0,
       "dropout on the experts' hidden activations while training (ffn bank, shared experts, dense baseline)"},
      {"moe.capacity_factor", 0.0,
       "expert capacity C = ceil(cf * N * k / E); 0 = dropless; expert_choice: tokens per expert (> 0)"},
      {"moe.eval_capacity_factor", -1.0, "capacity factor in evaluation (-1 = same as moe.capacity_factor)"},
      {"moe.capacity_drop", std::string("position"),
       "which slots an over-full expert drops: position (later tokens, later choices), weight (smallest) or "
       "priority (later choices, then tokens with the smaller largest gate: V-MoE's batch-prioritised routing)"},
      {"moe.jitter", 0.0, "router input jitter: multiply by U(1-j, 1+j) while training (Switch); 0 = off"},
      {"moe.router_norm", std::string("none"),
       "what the router reads: none (the layer's input) or rms (that input over its root mean square, no "
       "parameters; the experts still read the raw input)"},
      {"moe.groups", int64_t{1},
       "hierarchical, aux_free and group_limited routers: groups G of experts (must divide moe.experts)"},
      {"moe.group_k", int64_t{1},
       "hierarchical router: groups per token (moe.k is experts per chosen group); aux_free and group_limited: "
       "groups a token's k experts may come from (the ones with the best top-2 affinity sums)"},
      {"moe.granularity", int64_t{1},
       "fine-grained experts (DeepSeekMoE): split each expert into m of width expert_hidden / m and route to "
       "k * m of the experts * m (same parameters and FLOPs); moe.shared_experts counts fine experts"},
      {"moe.null_experts", int64_t{0},
       "null experts (AdaMoE): extra experts that cost nothing and add zero, so a token may use fewer than k "
       "real experts"},
      {"moe.relu_l1_init", 1e-8, "relu router: initial coefficient of the L1 penalty on the gates"},
      {"moe.relu_l1_rate", 1.2,
       "relu router: the L1 coefficient is multiplied (divided) by this after a step with more (fewer) than k "
       "active experts per token"},
      {"moe.affinity", std::string("sigmoid"), "aux_free router: sigmoid or softmax of the logits as affinities"},
      {"moe.route_scale", 1.0, "aux_free router: the gate weights (renormalised over the k chosen) times this"},
      {"moe.bias_update_rate", 1e-3,
       "aux_free router: per optimizer step, each expert's bias moves this far towards the mean load"},
      {"moe.noisy", true, "noisy top-k: trainable noise while training"},
      {"moe.noise_epsilon", 1e-2, "noisy top-k: floor of the noise standard deviation"},
      {"moe.parallel", std::string("data"),
       "with several processes (torchrun): data (replicate the model, average gradients) or expert (E/W experts "
       "per rank, tokens exchanged by all-to-all)",
       false},
      {"moe.balance.importance", 0.1, "weight of the importance loss (Shazeer eq. 7)"},
      {"moe.balance.load", 0.1, "weight of the load loss (Shazeer eq. 11; noisy gates only)"},
      {"moe.balance.switch", 0.0, "weight of the Switch auxiliary loss E * sum f_e P_e (Fedus et al. 2021)"},
      {"moe.balance.z", 0.0, "weight of the router z-loss mean(logsumexp(logits)^2) (Zoph et al. 2022)"},
      {"moe.balance.sequence", 0.0,
       "weight of DeepSeek-V3's sequence-wise balance loss: the Switch loss within each sequence, averaged"},
      {"moe.balance.scope", std::string("batch"),
       "what the importance, load and switch losses balance while training: batch (each rank's batch on its "
       "own) or global (the step's whole batch: every rank and micro-batch pooled, Qiu et al. 2025)"},

      {"train.steps", int64_t{1000}, "optimizer steps"},
      {"train.accumulate", int64_t{1},
       "gradient accumulation: each step's batch runs as this many micro-batches (language models: it must "
       "divide the batch columns per rank), one optimizer step on their summed gradients"},
      {"train.batch", int64_t{32}, "sequences per batch (columns of the token stream)"},
      {"train.batch_tokens", int64_t{4096},
       "translation: sentence pairs per batch, grouped by length, up to this many padded source or target tokens"},
      {"train.label_smoothing", 0.1, "translation: label smoothing of the training loss"},
      {"train.bptt", int64_t{35}, "truncated back-propagation window, in tokens"},
      {"train.lr", 20.0, "peak learning rate (20 suits sgd; Adam wants ~1e-3)"},
      {"train.optimizer", std::string("sgd"),
       "adam, adamw (decoupled weight decay, matrices only), sgd, adagrad or factored (no first moment, factored "
       "second moment, lazy per expert)"},
      {"train.beta2", 0.999, "adamw: decay of the second-moment average (Transformers often use 0.95-0.98)"},
      {"train.momentum", 0.0, "SGD momentum (0 = plain SGD, the classic LSTM LM recipe)"},
      {"train.weight_decay", 0.0, "L2 weight decay"},
      {"train.clip", 0.25, "gradient-norm clipping threshold (0 = off)"},
      {"train.warmup", int64_t{100}, "linear learning-rate warm-up steps"},
      {"train.decay", std::string("cosine"),
       "after warm-up: cosine, linear (to train.min_lr_ratio), inverse_sqrt (peak * sqrt(warmup / step)) or none"},
      {"train.min_lr_ratio", 0.1, "final learning rate as a fraction of the peak"},
      {"train.seed", int64_t{1}, "random seed"},
      {"train.freeze", StringList{},
       "parameters to keep fixed, by name pattern: \"experts\" matches every name containing it, \"!experts\" every "
       "name not containing it (ST-MoE fine-tuning: [\"experts\"] or [\"!experts\"])"},
      {"train.precision", std::string("float32"),
       "float32, or bf16: matrix products of attention, FFNs and experts in bfloat16; router, balancing losses, "
       "softmax output and master weights float32"},
      {"train.threads", int64_t{0}, "intra-op threads (0 = all cores)", false},
      {"train.device", std::string("cpu"),
       "cpu, cuda or cuda:N (several processes on CUDA: each takes cuda:LOCAL_RANK)", false},
      {"train.grouped_path", std::string("auto"),
       fmt::format("how expert blocks are multiplied: {} (auto: measured per shape and product on the CPU)",
                   fmt::join(grouped_path_names(), ", ")),
       false},
      {"train.grouped_path_cache", std::string("user"),
       "where auto keeps its measured choices so that later runs on this machine use the same kernels and repeat bit "
       "for bit: user ($MOELAB_CACHE_DIR, else ~/.cache/moelab), off (measure in every process), or a file",
       false},
      {"train.dist_timeout", 60.0,
       "with several processes: seconds a collective may wait before the run stops, naming the rank that died or hung",
       false},
      {"train.log_every", int64_t{50}, "steps between metrics lines", false},
      {"train.eval_every", int64_t{0}, "steps between validation passes (0 = at the end only)", false},
      {"train.checkpoint_every", int64_t{200}, "steps between checkpoints (always one at the end)", false},
      {"train.select", std::string("last"),
       "tagging / qa / translation: the model the summary reports: last (the final step) or best (best.pt, the "
       "step with the best validation figure: early stopping on the development set)"},
      {"train.eval_batch", int64_t{10}, "batch columns for evaluation"},
      {"train.eval_max_tokens", int64_t{0}, "evaluate on at most this many tokens per split (0 = all)"},

      {"decode.beam", int64_t{5}, "translation: beam size of the test translations (1 = greedy)", false},
      {"decode.alpha", 0.6, "translation: GNMT length penalty exponent", false},
      {"decode.max_ratio", 1.5, "translation: at most max_ratio * source length + 10 output tokens", false},

      {"debug.nan_at_step", int64_t{0}, "fault injection for tests: make the loss NaN at this step", false},
      {"debug.signal_at_step", int64_t{0},
       "fault injection for tests: send this process SIGTERM as this step starts (moelab train then checkpoints and "
       "stops; a program calling train_model without install_stop_signal_handlers is killed)",
       false},
      {"debug.window_routing_in_eval", false,
       "for measuring the difference only: language models evaluate with window-wide expert choice and capacity "
       "drops, which lets positions see later tokens", false},
  };
  return keys;
}

std::string config_type_name(const ConfigValue& value) {
  switch (value.index()) {
    case 0: return "boolean";
    case 1: return "integer";
    case 2: return "number";
    case 3: return "string";
    case 4: return "list of integers";
    default: return "list of strings";
  }
}

Config Config::defaults() {
  Config config;
  for (const auto& key : schema()) config.values_[key.name] = key.default_value;
  return config;
}

namespace {

std::string with_article(const ConfigValue& value) {
  const auto name = config_type_name(value);
  return (name[0] == 'i' ? "an " : "a ") + name;
}

const ConfigKey* find_key(const std::string& name) {
  for (const auto& key : Config::schema())
    if (key.name == name) return &key;
  return nullptr;
}

[[noreturn]] void fail_unknown_key(const std::string& name, const std::string& source) {
  fail("unknown config key '{}'{} (see `moelab train --list-keys`)", name, source.empty() ? "" : " in " + source);
}

// Converts a TOML leaf to the key's type; nullopt when the types do not match.
std::optional<ConfigValue> from_toml_node(const toml::node& node, const ConfigValue& expected) {
  switch (expected.index()) {
    case 0:
      if (auto v = node.value_exact<bool>()) return ConfigValue(*v);
      return std::nullopt;
    case 1:
      if (auto v = node.value_exact<int64_t>()) return ConfigValue(*v);
      return std::nullopt;
    case 2:
      if (node.is_integer()) return ConfigValue(static_cast<double>(*node.value<int64_t>()));
      if (auto v = node.value_exact<double>()) return ConfigValue(*v);
      return std::nullopt;
    case 3:
      if (auto v = node.value_exact<std::string>()) return ConfigValue(*v);
      return std::nullopt;
    case 5: {
      const auto* array = node.as_array();
      if (!array) return std::nullopt;
      StringList list;
      for (const auto& item : *array) {
        auto v = item.value_exact<std::string>();
        if (!v) return std::nullopt;
        list.push_back(*v);
      }
      return ConfigValue(list);
    }
    default: {
      const auto* array = node.as_array();
      if (!array) return std::nullopt;
      IntList list;
      for (const auto& item : *array) {
        auto v = item.value_exact<int64_t>();
        if (!v) return std::nullopt;
        list.push_back(*v);
      }
      return ConfigValue(list);
    }
  }
}

void read_table(const toml::table& table, const std::string& prefix, const std::string& source, Config& config) {
  for (const auto& [raw_key, node] : table) {
    const std::string name = prefix.empty() ? std::string(raw_key.str()) : prefix + "." + std::string(raw_key.str());
    if (const auto* sub = node.as_table()) {
      read_table(*sub, name, source, config);
      continue;
    }
    const ConfigKey* key = find_key(name);
    if (!key) fail_unknown_key(name, source);
    auto value = from_toml_node(node, key->default_value);
    if (!value)
      fail("config key '{}' in {} must be {}", name, source, with_article(key->default_value));
    config.set(name, *value);
  }
}

// "[a, b]" or "a,b" -> the trimmed items ("" gives none).
std::vector<std::string> list_items(const std::string& text) {
  std::string body = text;
  if (!body.empty() && body.front() == '[') body = body.substr(1);
  if (!body.empty() && body.back() == ']') body.pop_back();
  std::vector<std::string> items;
  std::stringstream stream(body);
  for (std::string item; std::getline(stream, item, ',');) items.push_back(trim(item));
  return items;
}

// Well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
bool valid_utf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    int extra = 0;
    uint32_t code = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      extra = 1, code = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      extra = 2, code = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      extra = 3, code = lead & 0x07;
    } else {
      return false;
    }
    if (i + extra >= text.size()) return false;  // the sequence runs past the end
    for (int j = 1; j <= extra; ++j) {
      const auto next = static_cast<unsigned char>(text[i + j]);
      if ((next & 0xC0) != 0x80) return false;
      code = (code << 6) | (next & 0x3F);
    }
    static const uint32_t smallest[] = {0, 0x80, 0x800, 0x10000};
    if (code < smallest[extra] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

bool parse_int(const std::string& text, int64_t& out) {
  try {
    size_t used = 0;
    out = std::stoll(text, &used);
    return used == text.size();
  } catch (...) {
    return false;
  }
}

std::string format_float(double v) {
  std::string s = fmt::format("{}", v);
  if (std::isfinite(v) && s.find_first_of(".eE") == std::string::npos) s += ".0";
  return s;
}

// A TOML basic string: quotes, backslashes and every control character escaped, so that any string
// a user passed (newlines, tabs, escape sequences) reads back as the same string.
std::string quote(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7f) {
      out += fmt::format("\\u{:04X}", byte);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string format_value(const ConfigValue& value) {
  switch (value.index()) {
    case 0: return std::get<bool>(value) ? "true" : "false";
    case 1: return std::to_string(std::get<int64_t>(value));
    case 2: return format_float(std::get<double>(value));
    case 3: return quote(std::get<std::string>(value));
    case 5: {
      const auto& list = std::get<StringList>(value);
      std::string out = "[";
      for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + quote(list[i]);
      return out + "]";
    }
    default: {
      const auto& list = std::get<IntList>(value);
      std::string out = "[";
      for (size_t i = 0; i < list.size(); ++i) out += (i ? ", " : "") + std::to_string(list[i]);
      return out + "]";
    }
  }
}

}  // namespace

Config Config::from_toml_string(const std::string& text, const std::string& source_name) {
  Config config = defaults();
  toml::table table;
  try {
    table = toml::parse(text, source_name);
  } catch (const toml::parse_error& error) {
    const auto& where = error.source().begin;
    fail("cannot parse {} at line {}, column {}: {}", source_name, where.line, where.column, error.description());
  }
  read_table(table, "", source_name, config);
  return config;
}

Config Config::from_toml_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot read config file {}", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return from_toml_string(buffer.str(), path);
}

void Config::apply_override(const std::string& assignment) {
  const auto [name, text, has_equals] = split_assignment(assignment);
  if (!has_equals) fail("--set expects section.key=value, got '{}'", assignment);
  const ConfigKey* key = find_key(name);
  if (!key) fail_unknown_key(name, "--set");
  const std::string type = with_article(key->default_value);
  switch (key->default_value.index()) {
    case 0:
      if (text == "true" || text == "false") return set(name, ConfigValue(text == "true"));
      break;
    case 1: {
      int64_t v = 0;
      if (parse_int(text, v)) return set(name, ConfigValue(v));
      break;
    }
    case 2: {
      try {
        size_t used = 0;
        const double v = std::stod(text, &used);
        if (used == text.size()) return set(name, ConfigValue(v));
      } catch (...) {
      }
      break;
    }
    case 3: {
      std::string v = text;
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      return set(name, ConfigValue(v));
    }
    case 5: {
      // Items may be quoted; empty items are skipped, so "[]" is the empty list.
      StringList list;
      for (auto item : list_items(text)) {
        if (item.size() >= 2 && item.front() == '"' && item.back() == '"') item = item.substr(1, item.size() - 2);
        if (!item.empty()) list.push_back(item);
      }
      return set(name, ConfigValue(list));
    }
    default: {
      IntList list;
      bool ok = true;
      for (const auto& item : list_items(text)) {
        int64_t v = 0;
        if (!parse_int(item, v)) ok = false;
        list.push_back(v);
      }
      if (ok) return set(name, ConfigValue(list));
      break;
    }
  }
  fail("--set {}: '{}' is not {}", name, text, type);
}

void Config::set(const std::string& key, const ConfigValue& value) {
  const ConfigKey* entry = find_key(key);
  if (!entry) fail_unknown_key(key, "");
  if (entry->default_value.index() != value.index())
    fail("config key '{}' must be {}, got {}", key, with_article(entry->default_value), with_article(value));
  // The resolved config.toml must read back: TOML strings are UTF-8, so other bytes are refused here.
  if (const auto* text = std::get_if<std::string>(&value))
    if (!valid_utf8(*text)) fail("config key '{}' must be UTF-8 text", key);
  if (const auto* list = std::get_if<StringList>(&value))
    for (const auto& item : *list)
      if (!valid_utf8(item)) fail("config key '{}' must be UTF-8 text", key);
  values_[key] = value;
}

const ConfigValue& Config::value(const std::string& key) const {
  const auto it = values_.find(key);
  if (it == values_.end()) fail_unknown_key(key, "");
  return it->second;
}

bool Config::get_bool(const std::string& key) const { return std::get<bool>(value(key)); }
int64_t Config::get_int(const std::string& key) const { return std::get<int64_t>(value(key)); }
double Config::get_float(const std::string& key) const { return std::get<double>(value(key)); }
const std::string& Config::get_string(const std::string& key) const { return std::get<std::string>(value(key)); }
const IntList& Config::get_int_list(const std::string& key) const { return std::get<IntList>(value(key)); }
const StringList& Config::get_string_list(const std::string& key) const { return std::get<StringList>(value(key)); }

void Config::validate() const {
  // fmt::runtime: the format arrives as a plain argument, which C++20's compile-time check of
  // format strings (LibTorch 2.x builds in C++20) cannot see through.
  auto require = [](bool ok, const char* format, auto&&... args) {
    if (!ok) fail("{}", fmt::format(fmt::runtime(format), std::forward<decltype(args)>(args)...));
  };
  auto positive = [&](const char* key) { require(get_int(key) > 0, "{} must be > 0, got {}", key, get_int(key)); };
  auto non_negative = [&](const char* key) {
    require(get_int(key) >= 0, "{} must be >= 0, got {}", key, get_int(key));
  };
  auto one_of = [&](const char* key, std::initializer_list<const char*> allowed) {
    const auto& v = get_string(key);
    std::string list;
    for (const auto* a : allowed) {
      if (v == a) return;
      list += (list.empty() ? "" : ", ") + std::string(a);
    }
    fail("{} must be one of {}, got '{}'", key, list, v);
  };

  // Every float key must be a number: inf and nan pass most range tests below (nan fails none of
  // "!(x < 0)"), and an infinite capacity factor or timeout overflows later into nonsense.
  for (const auto& key : schema())
    if (std::holds_alternative<double>(key.default_value))
      require(std::isfinite(get_float(key.name)), "{} must be a finite number, got {}", key.name.c_str(),
              get_float(key.name));
  require(!get_string("data.corpus").empty(), "data.corpus must name \"kjv\" or a directory");
  positive("data.min_count");
  non_negative("data.max_vocab");
  one_of("model.task", {"lm", "tagging", "qa", "translation"});
  const bool translation = get_string("model.task") == "translation";
  if (translation) {
    require(!get_string("data.src_lang").empty() && !get_string("data.tgt_lang").empty(),
            "data.src_lang and data.tgt_lang must name the languages (file suffixes)");
    require(get_string("data.src_lang") != get_string("data.tgt_lang"),
            "data.src_lang and data.tgt_lang are both '{}'", get_string("data.src_lang"));
    require(get_string("data.corpus") != "kjv", "model.task = \"translation\" needs data.corpus = a parallel corpus directory");
    require(get_int("data.spm_vocab") >= 8, "data.spm_vocab must be >= 8, got {}", get_int("data.spm_vocab"));
    one_of("data.spm_type", {"bpe", "unigram"});
    positive("model.encoder_layers");
    positive("model.decoder_layers");
    positive("train.batch_tokens");
    const double smoothing = get_float("train.label_smoothing");
    require(smoothing >= 0 && smoothing < 1, "train.label_smoothing must be in [0, 1), got {}", smoothing);
    require(get_int("decode.beam") >= 1, "decode.beam must be >= 1, got {}", get_int("decode.beam"));
    require(get_float("decode.alpha") >= 0, "decode.alpha must be >= 0, got {}", get_float("decode.alpha"));
    require(get_float("decode.max_ratio") > 0, "decode.max_ratio must be > 0, got {}", get_float("decode.max_ratio"));
    require(get_string("model.arch") != "lstm" || get_int("moe.experts") == 0 ||
                !get_int_list("moe.encoder_layers").empty() || !get_int_list("moe.decoder_layers").empty(),
            "an LSTM translation model places its MoE layers with moe.encoder_layers and moe.decoder_layers (both "
            "empty; moe.experts = 0 makes it dense)");
    require(get_string("model.arch") != "lstm" || get_int("model.hidden") % 2 == 0,
            "model.hidden = {} must be even: the first encoder layer is bidirectional, hidden / 2 per direction",
            get_int("model.hidden"));
    for (const char* key : {"moe.encoder_layers", "moe.decoder_layers"}) {
      const int64_t layers = get_int(std::string(key) == "moe.encoder_layers" ? "model.encoder_layers" : "model.decoder_layers");
      for (const int64_t after : get_int_list(key))
        require(after >= 1 && after < layers, "{} entries must be in [1, {}) (between two LSTM layers), got {}", key,
                layers, after);
    }
  } else if (get_string("model.task") != "lm") {
    require(!get_string("data.train").empty() && !get_string("data.valid").empty(),
            "model.task = \"{}\" needs data.train and data.valid (files)", get_string("model.task"));
    non_negative("data.max_context_tokens");
    non_negative("data.max_question_tokens");
    non_negative("data.max_answer_tokens");
  }
  one_of("model.arch", {"lstm", "transformer"});
  positive("model.embed");
  positive("model.hidden");
  if (get_string("model.arch") == "transformer") {
    require(get_string("model.task") == "lm" || translation,
            "model.arch = \"transformer\" is a language model or a translation model (model.task = \"lm\" or "
            "\"translation\"), not \"{}\"",
            get_string("model.task"));
    positive("model.layers");
    positive("model.heads");
    require(get_int("model.hidden") % get_int("model.heads") == 0, "model.heads = {} must divide model.hidden = {}",
            get_int("model.heads"), get_int("model.hidden"));
    positive("model.context");
    one_of("model.positions", {"learned", "rope"});
    require(get_string("model.positions") != "rope" || (get_int("model.hidden") / get_int("model.heads")) % 2 == 0,
            "model.positions = \"rope\" needs an even head width; model.hidden / model.heads = {}",
            get_int("model.hidden") / get_int("model.heads"));
    one_of("model.norm", {"layernorm", "rmsnorm"});
    non_negative("model.ffn_hidden");
    positive("moe.every");
    const char* blocks_key = translation ? "model.encoder_layers" : "model.layers";
    require(get_int("moe.experts") == 0 || get_string("moe.layer") != "moe" || get_int("moe.every") <= get_int(blocks_key),
            "moe.every = {} exceeds {} = {}: no block would have an MoE layer (moe.experts = 0 makes a dense "
            "transformer)",
            get_int("moe.every"), blocks_key, get_int(blocks_key));
  } else if (!translation) {
    non_negative("model.layers_before");
    non_negative("model.layers_after");
    require(get_int("model.layers_before") + get_int("model.layers_after") >= 1,
            "the model needs at least one LSTM layer (model.layers_before + model.layers_after >= 1)");
  }
  one_of("model.attention", {"auto", "fused", "plain"});
  require(get_string("model.attention") != "fused" || fused_attention_available(),
          "model.attention = \"fused\" needs LibTorch >= 2.0 (this build: {}); use auto or plain", TORCH_VERSION);
  const double dropout = get_float("model.dropout");
  require(dropout >= 0 && dropout < 1, "model.dropout must be in [0, 1), got {}", dropout);
  const double ffn_dropout = get_float("model.ffn_dropout");
  require(ffn_dropout == -1 || (ffn_dropout >= 0 && ffn_dropout < 1),
          "model.ffn_dropout must be -1 (= model.dropout) or in [0, 1), got {}", ffn_dropout);
  // The LSTM language model, tagger and reader build their dense layer (moe.layer = "dense") with the
  // experts' dropout, so that it is the MoE layer's twin by construction: nothing there reads this key.
  require(ffn_dropout == -1 || translation || get_string("model.arch") == "transformer",
          "model.ffn_dropout applies to transformers and translation only (model.arch = {}, model.task = {}: its "
          "dense layer drops at moe.expert_dropout)",
          get_string("model.arch"), get_string("model.task"));
  // Tagging and QA share the BiLSTM encoder and the task vocabulary, so their options go together.
  const bool text_task = get_string("model.task") == "tagging" || get_string("model.task") == "qa";
  const double singleton_unk = get_float("data.singleton_unk");
  require(singleton_unk >= 0 && singleton_unk <= 1, "data.singleton_unk must be in [0, 1], got {}", singleton_unk);
  require(singleton_unk == 0 || text_task,
          "data.singleton_unk applies to tagging and qa only (model.task = {})", get_string("model.task"));
  // Without GloVe, min_count >= 2 has already made every singleton <unk>: nothing would be replaced.
  require(singleton_unk == 0 || get_int("data.min_count") <= 1 || !get_string("data.embeddings").empty(),
          "data.singleton_unk needs data.min_count = 1 (with min_count = {} and no data.embeddings every word seen "
          "once is already <unk>)",
          get_int("data.min_count"));
  one_of("model.softmax", {"full", "adaptive"});
  one_of("model.decoder", {"softmax", "crf"});
  one_of("model.char_encoder", {"cnn", "bilstm"});
  require(get_int("model.char_embed") >= 0, "model.char_embed must be >= 0, got {}", get_int("model.char_embed"));
  require(get_int("model.char_embed") == 0 || get_int("model.char_hidden") >= 1,
          "model.char_hidden must be >= 1, got {}", get_int("model.char_hidden"));
  require(get_int("model.char_embed") == 0 || text_task,
          "model.char_embed applies to tagging and qa only (model.task = {})", get_string("model.task"));
  one_of("model.qa_attention", {"none", "bidaf"});
  require(get_string("model.qa_attention") == "none" || get_string("model.task") == "qa",
          "model.qa_attention = {} applies to qa only (model.task = {})", get_string("model.qa_attention"),
          get_string("model.task"));
  require(!get_bool("model.qa_word_overlap") || get_string("model.task") == "qa",
          "model.qa_word_overlap applies to qa only (model.task = {})", get_string("model.task"));
  require(get_string("model.decoder") == "softmax" || get_string("model.task") == "tagging",
          "model.decoder = crf applies to tagging only (model.task = {})", get_string("model.task"));
  require(!translation || get_string("model.softmax") == "full",
          "model.task = \"translation\" uses a full softmax tied to the target embedding, not model.softmax = \"{}\"",
          get_string("model.softmax"));
  one_of("moe.layer", {"moe", "dense", "deep"});
  const bool lstm_language_model = get_string("model.arch") == "lstm" && get_string("model.task") == "lm";
  require(get_string("moe.layer") != "deep" || lstm_language_model,
          "moe.layer = \"deep\" is built for the LSTM language model only (model.arch = \"lstm\", model.task = \"lm\")");
  positive("moe.deep_layers");
  non_negative("moe.deep_hidden");
  one_of("model.middle_norm", {"none", "pre", "post"});
  require(get_string("model.middle_norm") == "none" || lstm_language_model,
          "model.middle_norm is built for the LSTM language model only (model.arch = \"lstm\", model.task = \"lm\")");

  const int64_t experts = get_int("moe.experts");
  const int64_t k = get_int("moe.k");
  require(experts >= 0, "moe.experts must be >= 0 (0 = no MoE layer), got {}", experts);
  if (experts > 0) {
    require(k >= 1, "moe.k must be >= 1, got {}", k);
    if (get_string("moe.layer") == "moe") require(k <= experts, "moe.k = {} exceeds moe.experts = {}", k, experts);
    positive("moe.expert_hidden");
  }
  const double expert_dropout = get_float("moe.expert_dropout");
  require(expert_dropout >= 0 && expert_dropout < 1, "moe.expert_dropout must be in [0, 1), got {}", expert_dropout);
  require(expert_dropout == 0 || get_string("moe.bank") == "ffn",
          "moe.expert_dropout is implemented for the ffn bank only, not '{}'", get_string("moe.bank"));
  require(get_float("moe.capacity_factor") >= 0, "moe.capacity_factor must be >= 0 (0 = dropless)");
  require(valid_device_name(get_string("train.device")),
          "train.device must be \"cpu\", \"cuda\" or \"cuda:N\", got \"{}\"", get_string("train.device"));
  require(get_float("train.dist_timeout") >= 1, "train.dist_timeout must be >= 1 second, got {}",
          get_float("train.dist_timeout"));
  const double eval_cf = get_float("moe.eval_capacity_factor");
  require(eval_cf >= 0 || eval_cf == -1.0, "moe.eval_capacity_factor must be >= 0, or -1 (same as training)");
  parse_drop_policy(get_string("moe.capacity_drop"));  // the names live with the policies
  one_of("moe.parallel", {"data", "expert"});
  const auto& banks = expert_bank_names();
  if (std::find(banks.begin(), banks.end(), get_string("moe.bank")) == banks.end())
    fail("moe.bank must be one of {}, got '{}'", fmt::join(banks, ", "), get_string("moe.bank"));
  const double central_p = get_float("moe.central_update_p");
  require(central_p >= 0 && central_p <= 1, "moe.central_update_p must be in [0, 1], got {}", central_p);
  one_of("moe.affinity", {"sigmoid", "softmax"});
  require(get_float("moe.route_scale") > 0, "moe.route_scale must be > 0, got {}", get_float("moe.route_scale"));
  require(get_float("moe.bias_update_rate") >= 0, "moe.bias_update_rate must be >= 0, got {}",
          get_float("moe.bias_update_rate"));
  positive("moe.granularity");
  if (experts > 0 && get_int("moe.granularity") > 1)
    require(get_int("moe.expert_hidden") % get_int("moe.granularity") == 0,
            "moe.granularity = {} must divide moe.expert_hidden = {}", get_int("moe.granularity"),
            get_int("moe.expert_hidden"));
  non_negative("moe.null_experts");
  require(get_float("moe.relu_l1_init") > 0, "moe.relu_l1_init must be > 0, got {}", get_float("moe.relu_l1_init"));
  require(get_float("moe.relu_l1_rate") > 1, "moe.relu_l1_rate must be > 1, got {}", get_float("moe.relu_l1_rate"));
  const double jitter = get_float("moe.jitter");
  require(jitter >= 0 && jitter < 1, "moe.jitter must be in [0, 1), got {}", jitter);
  one_of("moe.router_norm", {"none", "rms"});
  auto routers = router_names();
  routers.push_back(kSoftRouter);
  if (std::find(routers.begin(), routers.end(), get_string("moe.router")) == routers.end())
    fail("moe.router must be one of {}, got '{}'", fmt::join(routers, ", "), get_string("moe.router"));
  positive("moe.soft_slots");
  const auto decoder_router = get_string("moe.decoder_router");
  if (!decoder_router.empty() && decoder_router != kSoftRouter &&
      std::find(routers.begin(), routers.end(), decoder_router) == routers.end())
    fail("moe.decoder_router must be empty or one of {}, got '{}'", fmt::join(router_names(), ", "), decoder_router);
  require(get_float("moe.noise_epsilon") >= 0, "moe.noise_epsilon must be >= 0");
  require(get_float("moe.balance.importance") >= 0, "moe.balance.importance must be >= 0");
  require(get_float("moe.balance.load") >= 0, "moe.balance.load must be >= 0");
  require(get_float("moe.balance.switch") >= 0, "moe.balance.switch must be >= 0");
  require(get_float("moe.balance.z") >= 0, "moe.balance.z must be >= 0");
  require(get_float("moe.balance.sequence") >= 0, "moe.balance.sequence must be >= 0");
  one_of("moe.balance.scope", {"batch", "global"});

  positive("train.steps");
  positive("train.accumulate");
  positive("train.batch");
  positive("train.bptt");
  positive("train.eval_batch");
  non_negative("train.eval_max_tokens");
  const double lr = get_float("train.lr");
  require(std::isfinite(lr) && lr > 0, "train.lr must be > 0, got {}", lr);
  one_of("train.optimizer", {"adam", "adamw", "sgd", "adagrad", "factored"});
  const double beta2 = get_float("train.beta2");
  require(beta2 > 0 && beta2 < 1, "train.beta2 must be in (0, 1), got {}", beta2);
  const auto& paths = grouped_path_names();
  require(std::find(paths.begin(), paths.end(), get_string("train.grouped_path")) != paths.end(),
          "train.grouped_path must be one of {}, got '{}'", fmt::join(paths, ", "), get_string("train.grouped_path"));
  require(!get_string("train.grouped_path_cache").empty(),
          "train.grouped_path_cache must be user, off or a file name, got an empty string");
  one_of("train.decay", {"cosine", "linear", "inverse_sqrt", "none"});
  one_of("train.precision", {"float32", "bf16"});
  for (const auto& pattern : get_string_list("train.freeze"))
    require(!pattern.empty() && pattern != "!", "train.freeze patterns must name something, got \"{}\"", pattern);
  require(get_float("train.clip") >= 0, "train.clip must be >= 0 (0 = off)");
  const double momentum = get_float("train.momentum");
  require(momentum >= 0 && momentum < 1, "train.momentum must be in [0, 1), got {}", momentum);
  require(get_float("train.weight_decay") >= 0, "train.weight_decay must be >= 0");
  const double min_ratio = get_float("train.min_lr_ratio");
  require(min_ratio >= 0 && min_ratio <= 1, "train.min_lr_ratio must be in [0, 1], got {}", min_ratio);
  non_negative("train.warmup");
  non_negative("train.threads");
  positive("train.log_every");
  non_negative("train.eval_every");
  one_of("train.select", {"last", "best"});
  require(get_string("train.select") == "last" || get_string("model.task") != "lm",
          "train.select = best needs a task with a validation figure to select by (tagging, qa, translation), "
          "not model.task = lm");
  require(get_string("train.select") == "last" || get_int("train.eval_every") > 0,
          "train.select = best needs train.eval_every > 0 (with evaluations only at the end, the last step is the only "
          "candidate)");
  positive("train.checkpoint_every");
  non_negative("debug.nan_at_step");
  non_negative("debug.signal_at_step");
}

std::string Config::to_toml() const {
  // Group keys by section in schema order; "moe.balance.x" belongs to section "moe.balance".
  std::vector<std::string> sections;
  std::map<std::string, std::string> body;
  for (const auto& key : schema()) {
    const auto dot = key.name.rfind('.');
    const std::string section = key.name.substr(0, dot);
    if (!body.count(section)) sections.push_back(section);
    body[section] += fmt::format("{} = {}\n", key.name.substr(dot + 1), format_value(value(key.name)));
  }
  std::string out = "# moelab resolved config\n";
  for (const auto& section : sections) out += fmt::format("\n[{}]\n{}", section, body[section]);
  return out;
}

std::string Config::first_experiment_difference(const Config& other) const {
  for (const auto& key : schema()) {
    if (!key.part_of_experiment) continue;
    if (value(key.name) != other.value(key.name))
      return fmt::format("{} ({} vs {})", key.name, format_value(value(key.name)), format_value(other.value(key.name)));
  }
  return "";
}

}  // namespace moelab
