// Translation against independent references: beam search of width 1 against greedy search,
// batched against one-by-one decoding, a sentence alone against the same sentence among long ones
// (padding must change nothing), a one-expert MoE encoder-decoder against the dense one, padded
// positions kept out of routing and balancing losses, resume after a kill (in the process and by a
// real SIGTERM), learning a made-up language pair in both directions, `moelab translate` on standard
// input and into a file, and the one-line errors for bad data.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <tuple>

#include "moelab/config/config.h"
#include "moelab/data/subword_model.h"
#include "moelab/experts/ffn_expert_bank.h"
#include "moelab/layers/attention.h"
#include "moelab/layers/dense_ffn.h"
#include "moelab/models/beam_search.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/distributed_run.h"
#include "moelab/train/trainer.h"
#include "moelab/train/training_task.h"
#include "moelab/train/translation_run.h"
#include "moelab/util/error.h"
#include "error_message.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::contains;
using moelab::testing::error_message;
using moelab::testing::TempDir;
using moelab::testing::write_file;

namespace {

// The two backbones, small: a Transformer with an MoE FFN in every block, and a GNMT-style LSTM
// with MoE layers after encoder layers 1 and 2 and decoder layer 1.
const std::vector<std::vector<std::string>>& backbones() {
  static const std::vector<std::vector<std::string>> all = {
      {"model.arch=transformer"},
      {"model.arch=lstm", "model.embed=16", "model.encoder_layers=3", "model.decoder_layers=3",
       "moe.encoder_layers=[1,2]", "moe.decoder_layers=[1]"}};
  return all;
}

Config translation_config(const std::vector<std::string>& overrides = {}) {
  auto config = Config::defaults();
  for (const char* assignment :
       {"model.task=translation", "model.arch=transformer", "model.hidden=16", "model.heads=2",
        "model.encoder_layers=2", "model.decoder_layers=2", "model.context=24", "model.dropout=0.0", "moe.experts=4",
        "moe.k=2", "moe.expert_hidden=12", "moe.every=1", "moe.router=topk", "moe.balance.load=0",
        "data.corpus=/nonexistent"})
    config.apply_override(assignment);
  for (const auto& assignment : overrides) config.apply_override(assignment);
  return config;
}

// Columns of random ids in [4, vocab) (past the special ids), end-of-sentence last, padded with 0.
struct Sources {
  torch::Tensor tokens, lengths;
};
Sources random_sources(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t longest = *std::max_element(lengths.begin(), lengths.end());
  auto tokens = torch::zeros({longest, static_cast<int64_t>(lengths.size())}, torch::kInt64);
  for (size_t b = 0; b < lengths.size(); ++b) {
    for (int64_t t = 0; t + 1 < lengths[b]; ++t) tokens[t][b] = static_cast<int64_t>(4 + rng() % (vocab - 4));
    tokens[lengths[b] - 1][b] = 3;
  }
  return {tokens, torch::tensor(lengths, torch::kInt64)};
}

Sources column(const Sources& sources, int64_t b) {
  const int64_t length = sources.lengths[b].item<int64_t>();
  return {sources.tokens.narrow(0, 0, length).narrow(1, b, 1).clone(), sources.lengths.narrow(0, b, 1).clone()};
}

TranslationModelPtr eval_model(const Config& config, int64_t vocab, uint64_t seed) {
  torch::manual_seed(seed);
  auto model = make_translation_model(config, vocab, vocab);
  model->eval();
  return model;
}

// A made-up language pair: each source word has one target word, in the same order, so a model
// must learn the dictionary and where to look in the source.
const std::vector<std::string> kSourceWords = {"der", "hund", "die", "katze", "sieht", "einen", "roten", "ball",
                                               "und", "läuft", "schnell", "im", "park", "mann", "frau", "spielt"};
const std::vector<std::string> kTargetWords = {"the", "dog", "a", "cat", "sees", "one", "red", "ball",
                                               "and", "runs", "fast", "in", "park", "man", "woman", "plays"};

std::pair<std::string, std::string> made_up_pair(std::mt19937_64& rng) {
  const size_t words = 3 + rng() % 5;
  std::string source, target;
  for (size_t i = 0; i < words; ++i) {
    const size_t id = rng() % kSourceWords.size();
    source += (i ? " " : "") + kSourceWords[id];
    target += (i ? " " : "") + kTargetWords[id];
  }
  if (rng() % 2) {
    source += ".";
    target += ".";
  }
  return {source, target};
}

// train/val/test_2016.{de,en} of the made-up pair in `dir`.
std::string make_parallel_corpus(const std::string& dir, int64_t train_pairs = 400) {
  std::mt19937_64 rng(11);
  for (const auto& [split, count] : std::vector<std::pair<std::string, int64_t>>{
           {"train", train_pairs}, {"val", 40}, {"test_2016", 40}}) {
    std::string de, en;
    for (int64_t i = 0; i < count; ++i) {
      const auto [source, target] = made_up_pair(rng);
      de += source + "\n";
      en += target + "\n";
    }
    write_file(dir + "/" + split + ".de", de);
    write_file(dir + "/" + split + ".en", en);
  }
  return dir;
}

Config corpus_config(const std::string& corpus, const std::vector<std::string>& overrides = {}) {
  auto config = translation_config({"data.corpus=" + corpus, "data.spm_vocab=48", "model.context=64", "train.batch_tokens=256",
                                    "train.optimizer=adamw", "train.lr=0.003", "train.warmup=10",
                                    "train.log_every=5", "train.checkpoint_every=4", "train.eval_every=0",
                                    "train.threads=1", "decode.beam=3", "train.label_smoothing=0.1",
                                    // auto would time the paths, and their rounding then depends on the load
                                    "train.grouped_path=loop"});
  for (const auto& assignment : overrides) config.apply_override(assignment);
  return config;
}

}  // namespace

TEST(Attention, UnpaddedKernelGivesPaddedKeysNoWeightAndAgreesWithFused) {
  torch::manual_seed(5);
  const auto q = torch::randn({2, 2, 3, 4}, torch::kFloat64), k = torch::randn({2, 2, 5, 4}, torch::kFloat64);
  const auto v = torch::randn({2, 2, 5, 4}, torch::kFloat64);
  auto padding = torch::zeros({2, 5}, torch::kBool);
  padding[1].narrow(0, 3, 2).fill_(true);
  const auto out = attend_unpadded(q, k, v, padding, AttentionKernel::kPlain);
  // Column 1 attends to its first 3 keys only: the same as without the last two keys at all.
  const auto short_out = attend_unpadded(q.narrow(0, 1, 1), k.narrow(0, 1, 1).narrow(2, 0, 3),
                                         v.narrow(0, 1, 1).narrow(2, 0, 3), torch::zeros({1, 3}, torch::kBool),
                                         AttentionKernel::kPlain);
  EXPECT_TRUE(torch::allclose(out.narrow(0, 1, 1), short_out, 1e-12, 1e-12));
  if (fused_attention_available()) {
    EXPECT_TRUE(torch::allclose(attend_unpadded(q, k, v, padding, AttentionKernel::kFused), out, 1e-10, 1e-10));
  }
}

// The plain kernel's products on the CPU go to oneDNN pair by pair; torch::matmul is their oracle.
TEST(Attention, ProductEqualsMatmulInValuesAndGradients) {
  torch::manual_seed(9);
  for (const auto& [a_shape, b_shape] : std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>>{
           {{3, 2, 5, 8}, {3, 2, 8, 7}}, {{4, 6, 16}, {4, 16, 6}}, {{2, 3, 1, 4}, {2, 3, 4, 9}},
           {{2, 3, 5, 4}, {1, 3, 4, 6}}}) {  // the last broadcasts: LibTorch's product
    const auto a = torch::randn(a_shape, torch::requires_grad()), b = torch::randn(b_shape, torch::requires_grad());
    // b as attention passes it: a transposed view.
    const auto b_view = b.transpose(-2, -1).contiguous().transpose(-2, -1);
    const auto direct = attention_product(a, b_view);
    const auto reference = torch::matmul(a.detach().requires_grad_(), b.detach().requires_grad_());
    ASSERT_EQ(direct.sizes(), reference.sizes());
    EXPECT_TRUE(torch::allclose(direct, reference, 1e-5, 1e-5));
    const auto weights = torch::randn(reference.sizes());
    const auto grads = torch::autograd::grad({(direct * weights).sum()}, {a, b});
    const auto a_ref = a.detach().requires_grad_(), b_ref = b.detach().requires_grad_();
    const auto ref_grads = torch::autograd::grad({(torch::matmul(a_ref, b_ref) * weights).sum()}, {a_ref, b_ref});
    EXPECT_TRUE(torch::allclose(grads[0], ref_grads[0], 1e-5, 1e-5)) << a_shape;
    EXPECT_TRUE(torch::allclose(grads[1], ref_grads[1], 1e-5, 1e-5)) << b_shape;
  }
}

// Width one keeps the greedy path until it ends (only a first-ranked end-of-sentence finishes a
// hypothesis), and then records exactly greedy's hypothesis; without a length penalty nothing after
// it can score higher. With a penalty the beam goes on along the runner-up and may find a longer
// hypothesis that scores higher, never one that scores lower.
TEST(BeamSearch, WidthOneIsGreedySearchWithoutLengthPenaltyAndNoWorseWithOne) {
  int64_t differs_with_penalty = 0;
  for (const auto& backbone : backbones())
  for (const char* router : {"topk", "switch"}) {
    auto overrides = backbone;
    overrides.push_back(std::string("moe.router=") + router);
    overrides.push_back(router == std::string("switch") ? "moe.k=1" : "moe.k=2");
    auto model = eval_model(translation_config(overrides), 20, 3);
    torch::NoGradGuard no_grad;
    const auto sources = random_sources({5, 3, 7, 2}, 20, 1);
    // Untrained models never rank end-of-sentence (3) first, so every search runs to its length
    // limit. Declaring the word the model ranks first after sentence 0's begin-of-sentence the end
    // makes the searches end early, which is where a length penalty can part them.
    const SearchOptions defaults;
    auto state = model->start_decoding(model->encode(sources.tokens, sources.lengths));
    const auto first_log_probs =
        model->decode_step(*state, torch::full({sources.tokens.size(1)}, defaults.bos, torch::kInt64));
    const int64_t first_word =
        first_log_probs[0].narrow(0, 4, first_log_probs.size(1) - 4).argmax().item<int64_t>() + 4;
    for (const int64_t eos : {defaults.eos, first_word})
    for (const double alpha : {0.0, 0.6, 5.0}) {
      SearchOptions options;
      options.beam = 1;
      options.alpha = alpha;
      options.eos = eos;
      const auto greedy = greedy_search(*model, sources.tokens, sources.lengths, options);
      const auto beam = beam_search(*model, sources.tokens, sources.lengths, options);
      for (size_t b = 0; b < greedy.size(); ++b) {
        SCOPED_TRACE(backbone.front() + " " + router + " end-of-sentence " + std::to_string(eos) + " alpha " +
                     std::to_string(alpha) + " sentence " + std::to_string(b));
        if (alpha == 0) {
          EXPECT_EQ(beam[b].tokens, greedy[b].tokens);
          EXPECT_NEAR(beam[b].log_prob, greedy[b].log_prob, 1e-9);
          EXPECT_NEAR(beam[b].score, greedy[b].score, 1e-9);
          EXPECT_EQ(beam[b].finished, greedy[b].finished);
        } else {
          EXPECT_GE(beam[b].score, greedy[b].score - 1e-9);
          if (beam[b].tokens == greedy[b].tokens) {
            EXPECT_NEAR(beam[b].score, greedy[b].score, 1e-9);
          }
          differs_with_penalty += beam[b].tokens != greedy[b].tokens;
        }
      }
    }
  }
  // If no penalised search left the greedy path, the penalty cases above checked nothing.
  EXPECT_GT(differs_with_penalty, 0);
}

TEST(BeamSearch, BatchedEqualsOneSentenceAtATimeAndPaddingChangesNothing) {
  for (const auto& backbone : backbones()) {
  SCOPED_TRACE(backbone.front());
  auto model = eval_model(translation_config(backbone), 20, 4);
  torch::NoGradGuard no_grad;
  // Sentence 0 is short; the others are long, so it is padded in the batch.
  const auto sources = random_sources({3, 12, 9, 11, 6}, 20, 2);
  for (const int64_t beam : {1, 4}) {
    SearchOptions options;
    options.beam = beam;
    options.alpha = 0.6;
    const auto batched = translate_batch(*model, sources.tokens, sources.lengths, options);
    for (int64_t b = 0; b < sources.tokens.size(1); ++b) {
      const auto alone = column(sources, b);
      const auto single = translate_batch(*model, alone.tokens, alone.lengths, options);
      EXPECT_EQ(single[0].tokens, batched[b].tokens) << "beam " << beam << " sentence " << b;
      EXPECT_NEAR(single[0].log_prob, batched[b].log_prob, 1e-4) << "beam " << beam << " sentence " << b;
      EXPECT_NEAR(single[0].score, batched[b].score, 1e-4) << "beam " << beam << " sentence " << b;
      EXPECT_EQ(single[0].finished, batched[b].finished) << "beam " << beam << " sentence " << b;
    }
  }
  // Beam search finds no worse (penalised) score than greedy search on these fixed models. Not a
  // theorem (a beam can prune the greedy path), so a failure after a change to the models' set-up is
  // worth a look rather than proof of a bug; on search code it catches a broken ranking.
  SearchOptions wide, narrow;
  wide.beam = 4;
  narrow.beam = 1;
  const auto b4 = beam_search(*model, sources.tokens, sources.lengths, wide);
  const auto g = greedy_search(*model, sources.tokens, sources.lengths, narrow);
  for (size_t b = 0; b < b4.size(); ++b) EXPECT_GE(b4[b].score, g[b].score - 1e-6) << "sentence " << b;
  }
}

// Untrained models over six ids often rank padding (0) or begin-of-sentence (2) first; neither
// search may ever choose one.
TEST(BeamSearch, NeverChoosesPaddingOrBeginOfSentence) {
  int64_t special_first = 0;  // rows whose model ranks a special id first: what gives the test teeth
  for (const auto& backbone : backbones())
    for (const uint64_t seed : {1, 2, 3, 4}) {
      SCOPED_TRACE(backbone.front() + " seed " + std::to_string(seed));
      auto model = eval_model(translation_config(backbone), 6, seed);
      torch::NoGradGuard no_grad;
      const auto sources = random_sources({4, 6, 3}, 6, seed);
      auto state = model->start_decoding(model->encode(sources.tokens, sources.lengths));
      const auto first = model->decode_step(*state, torch::full({3}, 2, torch::kInt64)).argmax(1);
      special_first += (first == 0).logical_or(first == 2).sum().item<int64_t>();
      for (const int64_t beam : {1, 3}) {
        SearchOptions options;
        options.beam = beam;
        for (const auto& hypothesis : translate_batch(*model, sources.tokens, sources.lengths, options))
          for (const auto token : hypothesis.tokens) EXPECT_TRUE(token != 0 && token != 2) << "beam " << beam;
      }
    }
  EXPECT_GT(special_first, 0) << "no model ranked a special id first, so no search was tempted";
}

TEST(TranslationModel, PaddedPositionsNeverReachARouterAndChangeNoRealOutput) {
  for (const auto& backbone : backbones()) {
  SCOPED_TRACE(backbone.front());
  auto model = eval_model(translation_config(backbone), 20, 6);
  torch::NoGradGuard no_grad;
  const auto sources = random_sources({3, 8}, 20, 3);
  const auto encoded = model->encode(sources.tokens, sources.lengths);
  ASSERT_EQ(encoded.moe.routing.size(), 2u);
  for (const auto& stats : encoded.moe.routing) EXPECT_EQ(stats.num_tokens, 11);  // 3 + 8 real, 5 padded
  const auto alone = column(sources, 0);
  const auto encoded_alone = model->encode(alone.tokens, alone.lengths);
  EXPECT_TRUE(torch::allclose(encoded.memory.narrow(0, 0, 3).narrow(1, 0, 1), encoded_alone.memory, 1e-5, 1e-6));

  // Teacher forcing: 3 and 6 real decoder positions (begin-of-sentence included).
  auto target_input = torch::randint(4, 20, {6, 2}, torch::kInt64);
  target_input[0].fill_(2);
  auto target_padding = torch::zeros({6, 2}, torch::kBool);
  target_padding.narrow(0, 3, 3).select(1, 0).fill_(true);
  const auto decoded = model->decode(encoded, target_input, target_padding);
  ASSERT_FALSE(decoded.moe.routing.empty());
  for (const auto& stats : decoded.moe.routing) EXPECT_EQ(stats.num_tokens, 9);
  const auto decoded_alone = model->decode(encoded_alone, target_input.narrow(0, 0, 3).narrow(1, 0, 1).clone(),
                                           torch::zeros({3, 1}, torch::kBool));
  EXPECT_TRUE(
      torch::allclose(decoded.features.narrow(0, 0, 3).narrow(1, 0, 1), decoded_alone.features, 1e-5, 1e-6));
  }
}

// The same batch with more padding rows (a longer sentence elsewhere in a real batch would add them)
// must give the same balancing losses and routing counts: a padded position is never a routed token.
TEST(TranslationModel, ExtraPaddingChangesNoBalancingLossAndNoRoutingCount) {
  for (auto settings : backbones()) {
    SCOPED_TRACE(settings.front());
    for (const char* a : {"moe.balance.importance=0.1", "moe.balance.switch=0.1", "moe.balance.z=0.01"})
      settings.push_back(a);
    auto model = eval_model(translation_config(settings), 20, 10);
    torch::NoGradGuard no_grad;
    const auto sources = random_sources({3, 8, 5}, 20, 12);
    auto padded_sources = sources;
    padded_sources.tokens = torch::cat({sources.tokens, torch::zeros({4, 3}, torch::kInt64)}, 0);
    const auto encoded = model->encode(sources.tokens, sources.lengths);
    const auto encoded_padded = model->encode(padded_sources.tokens, padded_sources.lengths);

    auto target_input = torch::randint(4, 20, {6, 3}, torch::kInt64);
    target_input[0].fill_(2);
    auto target_padding = torch::zeros({6, 3}, torch::kBool);
    target_padding.narrow(0, 3, 3).select(1, 0).fill_(true);
    const auto padded_input = torch::cat({target_input, torch::zeros({3, 3}, torch::kInt64)}, 0);
    const auto padded_padding = torch::cat({target_padding, torch::ones({3, 3}, torch::kBool)}, 0);
    const auto decoded = model->decode(encoded, target_input, target_padding);
    const auto decoded_padded = model->decode(encoded_padded, padded_input, padded_padding);

    for (const auto& [plain, padded, side] : {std::tuple{&encoded.moe, &encoded_padded.moe, "encoder"},
                                              std::tuple{&decoded.moe, &decoded_padded.moe, "decoder"}}) {
      SCOPED_TRACE(side);
      ASSERT_GT(plain->aux_loss.item<double>(), 0.0);
      EXPECT_NEAR(padded->aux_loss.item<double>(), plain->aux_loss.item<double>(), 1e-6);
      ASSERT_EQ(padded->routing.size(), plain->routing.size());
      ASSERT_FALSE(plain->routing.empty());
      for (size_t layer = 0; layer < plain->routing.size(); ++layer) {
        EXPECT_EQ(padded->routing[layer].num_tokens, plain->routing[layer].num_tokens) << "layer " << layer;
        EXPECT_TRUE(torch::equal(padded->routing[layer].assigned, plain->routing[layer].assigned)) << "layer " << layer;
        EXPECT_TRUE(torch::allclose(padded->routing[layer].importance, plain->routing[layer].importance, 1e-5, 1e-7))
            << "layer " << layer;
      }
    }
    EXPECT_EQ(encoded.moe.routing.front().num_tokens, 16);  // 3 + 8 + 5 real positions
    EXPECT_EQ(decoded.moe.routing.front().num_tokens, 15);  // 3 + 6 + 6
  }
}

TEST(TranslationModel, SoftMoEEncoderMixesEachSentenceOnlyWithItself) {
  // Soft MoE slots average a whole sequence: batching a sentence with a longer one (and its
  // padding) must leave its memory unchanged. The causal decoder routes with its own router.
  const std::vector<std::vector<std::string>> soft_backbones = {
      {"model.arch=transformer"},
      {"model.arch=lstm", "model.embed=16", "model.encoder_layers=3", "model.decoder_layers=2",
       "moe.encoder_layers=[1,2]", "moe.decoder_layers=[1]"}};
  for (auto settings : soft_backbones) {
    SCOPED_TRACE(settings.front());
    for (const char* o : {"moe.router=soft", "moe.soft_slots=2", "moe.balance.importance=0.01"}) settings.push_back(o);
    // Without a router of its own the decoder would be Soft MoE too, and it is causal.
    EXPECT_THROW(eval_model(translation_config(settings), 20, 8), moelab::Error);
    settings.push_back("moe.decoder_router=topk_mask");
    auto model = eval_model(translation_config(settings), 20, 8);
    torch::NoGradGuard no_grad;
    const auto sources = random_sources({3, 8}, 20, 4);
    const auto encoded = model->encode(sources.tokens, sources.lengths);
    ASSERT_EQ(encoded.moe.routing.size(), 2u);
    for (const auto& stats : encoded.moe.routing) EXPECT_EQ(stats.num_tokens, 11);
    for (int64_t b = 0; b < 2; ++b) {
      const auto alone = column(sources, b);
      const int64_t length = alone.tokens.size(0);
      EXPECT_TRUE(torch::allclose(encoded.memory.narrow(0, 0, length).narrow(1, b, 1),
                                  model->encode(alone.tokens, alone.lengths).memory, 1e-5, 1e-6))
          << "sentence " << b;
    }
    auto target_input = torch::randint(4, 20, {4, 2}, torch::kInt64);
    const auto decoded = model->decode(encoded, target_input, torch::zeros({4, 2}, torch::kBool));
    ASSERT_FALSE(decoded.moe.routing.empty());
    // The encoder's Soft MoE layers add no balancing loss; the decoder's routed ones do.
    EXPECT_EQ(encoded.moe.aux_loss.item<double>(), 0.0);
    EXPECT_GT(decoded.moe.aux_loss.item<double>(), 0.0);
  }
}

TEST(TranslationModel, OneExpertMoEEqualsTheDenseModelInOutputsAndGradients) {
  for (const auto& backbone : backbones()) {
    SCOPED_TRACE(backbone.front());
    auto dense_overrides = backbone, moe_overrides = backbone;
    // The Transformer's dense blocks and the LSTM's dense FFNs in the MoE places, of the expert's width.
    for (const char* a : {"moe.layer=dense", "model.ffn_hidden=12"}) dense_overrides.push_back(a);
    for (const char* a : {"moe.experts=1", "moe.k=1", "moe.router=softmax", "moe.balance.importance=0"})
      moe_overrides.push_back(a);
    torch::manual_seed(7);
    auto dense = make_translation_model(translation_config(dense_overrides), 20, 20);
    auto moe = make_translation_model(translation_config(moe_overrides), 20, 20);
    {
      torch::NoGradGuard no_grad;
      auto targets = moe->named_parameters();
      const auto layers = moe->moe_layers();
      int copied_ffn = 0;
      for (const auto& item : dense->named_parameters()) {
        const auto& name = item.key();
        // "<prefix>.dense.up.weight" (Transformer) or "<side>_ffn_<n>.up.weight" (LSTM).
        auto ffn = name.find(".dense.");
        std::string moe_name;
        if (ffn != std::string::npos) {
          moe_name = name.substr(0, ffn) + ".moe";
          ffn += 7;
        } else if (name.find("_ffn_") != std::string::npos) {
          const auto dot = name.find('.');
          moe_name = name.substr(0, dot);
          moe_name.replace(moe_name.find("_ffn_"), 5, "_moe_");
          ffn = dot + 1;
        } else {
          ASSERT_TRUE(targets.contains(name)) << name;
          targets[name].copy_(item.value());
          continue;
        }
        const auto layer = std::find_if(layers.begin(), layers.end(), [&](const NamedMoELayer& l) { return l.name == moe_name; });
        ASSERT_NE(layer, layers.end()) << moe_name;
        auto bank = std::dynamic_pointer_cast<FfnExpertBank>(layer->layer->experts);
        ASSERT_TRUE(bank);
        const auto part = name.substr(ffn);
        if (part == "up.weight") bank->w_in[0].copy_(item.value().t());
        if (part == "up.bias") bank->b_in[0].copy_(item.value());
        if (part == "down.weight") bank->w_out[0].copy_(item.value().t());
        if (part == "down.bias") bank->b_out[0].copy_(item.value());
        ++copied_ffn;
      }
      EXPECT_EQ(copied_ffn, 4 * static_cast<int>(layers.size()));
    }
    const auto sources = random_sources({4, 6, 2}, 20, 5);
    auto target_input = torch::randint(4, 20, {5, 3}, torch::kInt64);
    auto target_padding = torch::zeros({5, 3}, torch::kBool);
    target_padding.narrow(0, 2, 3).select(1, 2).fill_(true);
    // Real target positions only: a dense FFN also transforms padding, an MoE layer leaves it out.
    const auto real = target_padding.logical_not().reshape({-1}).nonzero().squeeze(1);
    auto run = [&](TranslationModelImpl& model) {
      const auto encoded = model.encode(sources.tokens, sources.lengths);
      const auto decoded = model.decode(encoded, target_input, target_padding);
      return decoded.features.reshape({-1, decoded.features.size(-1)}).index_select(0, real);
    };
    const auto dense_features = run(*dense), moe_features = run(*moe);
    EXPECT_TRUE(torch::allclose(moe_features, dense_features, 1e-5, 1e-5));
    const auto targets = torch::randint(4, 20, {real.size(0)}, torch::kInt64);
    label_smoothed_nll(dense->log_probs(dense_features), targets, 0.1).backward();
    label_smoothed_nll(moe->log_probs(moe_features), targets, 0.1).backward();
    auto moe_parameters = moe->named_parameters();
    int compared = 0;
    for (const auto& item : dense->named_parameters()) {
      if (item.key().find(".dense.") != std::string::npos || item.key().find("_ffn_") != std::string::npos) continue;
      EXPECT_TRUE(torch::allclose(moe_parameters[item.key()].grad(), item.value().grad(), 1e-4, 1e-6)) << item.key();
      ++compared;
    }
    EXPECT_GT(compared, 8);
    // And incremental decoding follows teacher forcing position by position.
    moe->eval();
    torch::NoGradGuard no_grad;
    const auto encoded = moe->encode(sources.tokens, sources.lengths);
    const auto full = moe->log_probs(moe->decode(encoded, target_input, torch::zeros({5, 3}, torch::kBool)).features)
                          .view({5, 3, -1});
    auto state = moe->start_decoding(encoded);
    for (int64_t t = 0; t < 5; ++t)
      EXPECT_TRUE(torch::allclose(moe->decode_step(*state, target_input[t]), full[t], 1e-5, 1e-5)) << "position " << t;
  }
}

// model.ffn_dropout sets the dense FFNs' hidden dropout apart from model.dropout (a dense twin of an
// MoE model whose experts drop nothing), in both backbones and the Transformer language model; unset,
// the FFNs drop at model.dropout as before.
TEST(TranslationModel, FfnDropoutKeySetsTheDenseFfnsHiddenDropout) {
  auto ffn_dropouts = [](const torch::nn::Module& model) {
    std::vector<double> found;
    for (const auto& module : model.modules())
      if (const auto* ffn = dynamic_cast<const DenseFfnImpl*>(module.get())) found.push_back(ffn->options.hidden_dropout());
    return found;
  };
  for (const auto& backbone : backbones()) {
    SCOPED_TRACE(backbone.front());
    auto overrides = backbone;
    for (const char* a : {"moe.layer=dense", "model.ffn_hidden=12", "model.dropout=0.3"}) overrides.push_back(a);
    const auto as_before = ffn_dropouts(*make_translation_model(translation_config(overrides), 20, 20));
    overrides.push_back("model.ffn_dropout=0.05");
    EXPECT_NO_THROW(translation_config(overrides).validate());
    const auto apart = ffn_dropouts(*make_translation_model(translation_config(overrides), 20, 20));
    ASSERT_FALSE(as_before.empty());
    EXPECT_EQ(as_before, std::vector<double>(as_before.size(), 0.3));
    EXPECT_EQ(apart, std::vector<double>(as_before.size(), 0.05));
  }
  auto language_model = translation_config({"model.task=lm", "moe.experts=0", "model.layers=2", "model.dropout=0.3",
                                            "model.ffn_dropout=0"});
  EXPECT_NO_THROW(language_model.validate());
  EXPECT_EQ(ffn_dropouts(*make_language_model(language_model, 20)), std::vector<double>(2, 0.0));
  for (const char* bad : {"model.ffn_dropout=1", "model.ffn_dropout=-0.5"})
    EXPECT_THROW(translation_config({bad}).validate(), Error) << bad;
  auto lstm_language_model = Config::defaults();
  lstm_language_model.apply_override("model.ffn_dropout=0.1");
  const auto refused = error_message([&] { lstm_language_model.validate(); });
  EXPECT_TRUE(contains(refused, "model.ffn_dropout applies to transformers and translation only")) << refused;
  EXPECT_TRUE(contains(refused, "(model.arch = lstm, model.task = lm: its dense layer drops at moe.expert_dropout)"))
      << refused;
}

// Enough training for the made-up pair to be learned (about 20 s on 2 cores).
Config learning_config(const std::string& corpus, const std::vector<std::string>& overrides = {}) {
  std::vector<std::string> settings = {"train.steps=400",      "train.eval_every=200",   "model.hidden=64",
                                       "model.heads=4",        "moe.expert_hidden=64",   "data.spm_vocab=96",
                                       "train.batch_tokens=512", "train.lr=0.002"};
  settings.insert(settings.end(), overrides.begin(), overrides.end());
  return corpus_config(corpus, settings);
}

TEST(Translation, LearnsAMadeUpLanguagePairAndTranslatesFromItsRunDirectory) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data, run;
  auto config = learning_config(make_parallel_corpus(data.path()));
  TrainRequest request{config, run.path()};
  request.quiet = true;
  const auto result = train_model(request);
  ASSERT_TRUE(result.finished);
  const auto& summary = result.summary;
  EXPECT_GT(summary["test_bleu"].get<double>(), 50.0) << summary.dump(2);
  EXPECT_GT(summary["valid_bleu"].get<double>(), 50.0);
  EXPECT_EQ(summary["bleu_signature"], "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
  for (const char* key : {"test_chrf", "valid_loss", "latency_ms_beam1", "latency_ms_beam3", "test_bleu_greedy",
                          "flops_per_source_target_token", "params_total", "params_active_per_token",
                          "tokens_per_s", "peak_rss_mb"}) {
    ASSERT_TRUE(summary.contains(key)) << key;
    EXPECT_GT(summary[key].get<double>(), 0.0) << key;
  }
  EXPECT_GT(summary["test_chrf"].get<double>(), 50.0);
  // Top-2 of 4 experts in every block: half the expert weights are active for a token.
  EXPECT_LT(summary["params_active_per_token"].get<double>(), summary["params_total"].get<double>());
  ASSERT_EQ(summary["moe_layers"].size(), 4u);
  EXPECT_EQ(summary["moe_layers"][0]["name"], "encoder.0.moe");
  EXPECT_EQ(summary["moe_layers"][3]["name"], "decoder.1.moe");
  EXPECT_TRUE(std::filesystem::exists(run.file("best.pt")));
  EXPECT_TRUE(std::filesystem::exists(run.file("spm_source.model")));
  EXPECT_TRUE(std::filesystem::exists(run.file("test.beam3.txt")));

  auto loaded = load_translation_run(run.path(), "cpu", "last");
  auto options = search_options(loaded.config);
  const auto out = translate_text(loaded, {"die frau spielt im park.", "der hund sieht einen roten ball."}, options);
  ASSERT_EQ(out.size(), 2u);
  // The made-up pair's words map one to one; after 400 steps the sentence's start is right and
  // its last words may still be missing (observed: "a woman plays in park." and "a woman plays in.").
  EXPECT_EQ(out[0].rfind("a woman plays", 0), 0u) << out[0];

  // The command line: translations one per line, and one-line errors for bad input.
  write_file(data.file("input.de"), "die frau spielt im park.\nder hund sieht einen roten ball.\n");
  const auto translated = moelab::testing::run_moelab("translate --run " + moelab::testing::sq(run.path()) +
                                                      " --beam 3 --checkpoint last --input " +
                                                      moelab::testing::sq(data.file("input.de")));
  EXPECT_EQ(translated.exit_code, 0) << translated.output;
  EXPECT_EQ(translated.output, out[0] + "\n" + out[1] + "\n");
  // Standard input by default, and --output writes the file and nothing to standard output.
  const auto piped = moelab::testing::run_shell(
      moelab::testing::sq(moelab::testing::moelab_executable()) + " translate --run " +
      moelab::testing::sq(run.path()) + " --beam 3 --checkpoint last < " + moelab::testing::sq(data.file("input.de")));
  EXPECT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_EQ(piped.output, translated.output);
  const auto written = moelab::testing::run_moelab(
      "translate --run " + moelab::testing::sq(run.path()) + " --beam 3 --checkpoint last --input " +
      moelab::testing::sq(data.file("input.de")) + " --output " + moelab::testing::sq(data.file("out.en")));
  EXPECT_EQ(written.exit_code, 0) << written.output;
  EXPECT_EQ(written.output, "");
  EXPECT_EQ(moelab::testing::read_file(data.file("out.en")), translated.output);
  write_file(data.file("gap.de"), "die frau spielt im park.\n\nder hund.\n");
  const auto gap = moelab::testing::run_moelab("translate --run " + moelab::testing::sq(run.path()) + " --input " +
                                               moelab::testing::sq(data.file("gap.de")));
  EXPECT_NE(gap.exit_code, 0);
  EXPECT_NE(gap.output.find("gap.de:2: empty line"), std::string::npos) << gap.output;
  for (const std::string flag : {"--beam", "--alpha", "--max-ratio"}) {  // values the search cannot use
    const auto bad = moelab::testing::run_moelab("translate --run " + moelab::testing::sq(run.path()) + " " + flag +
                                                 (flag == "--alpha" ? "=-0.5" : "=0") + " --input " +
                                                 moelab::testing::sq(data.file("input.de")));
    EXPECT_NE(bad.exit_code, 0) << flag;
    EXPECT_NE(bad.output.find(flag + " must be"), std::string::npos) << bad.output;
  }
  const auto missing = moelab::testing::run_moelab("translate --run " + moelab::testing::sq(data.file("no-run")));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("does not exist"), std::string::npos) << missing.output;
}

// The same directory read the other way round (data.src_lang = en, data.tgt_lang = de): English
// sources from test_2016.en, German output.
TEST(Translation, LearnsTheOtherDirectionFromTheSameDirectory) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data, run;
  TrainRequest request{learning_config(make_parallel_corpus(data.path()), {"data.src_lang=en", "data.tgt_lang=de"}),
                       run.path()};
  request.quiet = true;
  const auto result = train_model(request);
  ASSERT_TRUE(result.finished);
  const auto& summary = result.summary;
  EXPECT_EQ(summary["languages"], "en-de");
  EXPECT_EQ(summary["test_file"], data.file("test_2016.en"));
  EXPECT_GT(summary["test_bleu"].get<double>(), 50.0) << summary.dump(2);
  auto loaded = load_translation_run(run.path(), "cpu", "last");
  const auto out = translate_text(loaded, {"a woman plays in park."}, search_options(loaded.config));
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].rfind("die frau spielt", 0), 0u) << out[0];
}

TEST(Translation, ResumesAfterAKillWithTheSameLossesAndScores) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data;
  make_parallel_corpus(data.path(), 120);
  for (const auto& backbone : backbones()) {
    SCOPED_TRACE(backbone.front());
    TempDir whole, killed;
    auto overrides = backbone;
    for (const char* a : {"train.steps=10", "model.dropout=0.1"}) overrides.push_back(a);
    auto config = corpus_config(data.path(), overrides);
    TrainRequest uninterrupted{config, whole.path()};
    uninterrupted.quiet = true;
    const auto reference = train_model(uninterrupted);
    TrainRequest first{config, killed.path()};
    first.quiet = true;
    first.stop_after_step = 6;
    EXPECT_FALSE(train_model(first).finished);
    EXPECT_EQ(read_checkpoint_meta(killed.file("checkpoint.pt")).step, 4);
    TrainRequest second{config, killed.path()};
    second.quiet = true;
    second.resume = true;
    const auto resumed = train_model(second);
    ASSERT_TRUE(resumed.finished);
    EXPECT_EQ(resumed.summary["valid_loss"], reference.summary["valid_loss"]);
    EXPECT_EQ(resumed.summary["test_bleu"], reference.summary["test_bleu"]);
    EXPECT_EQ(moelab::testing::read_file(killed.file("test.beam3.txt")),
              moelab::testing::read_file(whole.file("test.beam3.txt")));
  }
}

// The same through the command line with a real SIGTERM as step 6 starts: the process ends by the
// signal with step 6 checkpointed (none was due there), and the resumed run scores and logs what a run
// never stopped does.
TEST(Translation, SigtermStopsAtACheckpointAndTheResumedRunMatchesAnUnstoppedOne) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  using moelab::testing::run_moelab;
  using moelab::testing::sq;
  TempDir data, dir;
  make_parallel_corpus(data.path(), 120);
  write_file(dir.file("config.toml"),
             corpus_config(data.path(), {"train.steps=8", "train.log_every=1", "model.dropout=0.1"}).to_toml());
  const std::string stopped = dir.file("stopped"), whole = dir.file("whole");
  const auto r = run_moelab("train --quiet --config " + sq(dir.file("config.toml")) +
                            " --set debug.signal_at_step=6 --out " + sq(stopped));
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << r.output;
  EXPECT_NE(r.output.find("stopped by SIGTERM after step 6"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(stopped + "/summary.json"));
  EXPECT_EQ(read_checkpoint_meta(stopped + "/checkpoint.pt").step, 6);
  const auto resumed = run_moelab("train --resume --quiet --set debug.signal_at_step=0 --out " + sq(stopped));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  const auto unstopped = run_moelab("train --quiet --config " + sq(dir.file("config.toml")) + " --out " + sq(whole));
  ASSERT_EQ(unstopped.exit_code, 0) << unstopped.output;
  const auto a = nlohmann::json::parse(moelab::testing::read_file(stopped + "/summary.json"));
  const auto b = nlohmann::json::parse(moelab::testing::read_file(whole + "/summary.json"));
  EXPECT_EQ(a["steps"], 8);
  EXPECT_EQ(a["valid_loss"], b["valid_loss"]);
  EXPECT_EQ(a["test_bleu"], b["test_bleu"]);
  EXPECT_EQ(moelab::testing::training_losses(stopped), moelab::testing::training_losses(whole));
  EXPECT_EQ(moelab::testing::read_file(stopped + "/test.beam3.txt"),
            moelab::testing::read_file(whole + "/test.beam3.txt"));
}

// train.batch_tokens = 1 gives every pair a batch of its own, so train.accumulate = 3 asks for three
// micro-batches of one pair: the step runs it as one (micro_batches_for) and must log the pair's
// whole loss and apply its whole gradient (plain SGD without clipping, where a third of the gradient
// would show in later losses), not a third of either.
TEST(Translation, EmptyMicroBatchesShrinkNeitherTheLossNorTheStep) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data;
  make_parallel_corpus(data.path(), 60);
  // Each pair is its own batch, so train.accumulate = 3 asks for more micro-batches than there are
  // examples. A strong importance loss pooled over the step (scope "global") counts the micro-batches
  // in its gradient: a wrong count changes the later losses too.
  for (const std::string scope : {"batch", "global"}) {
    auto losses = [&](int64_t accumulate) {
      TempDir run;
      TrainRequest request{corpus_config(data.path(), {"train.steps=6", "train.log_every=1", "train.batch_tokens=1",
                                                       "train.optimizer=sgd", "train.lr=0.5", "train.clip=0",
                                                       "moe.balance.importance=1", "moe.balance.scope=" + scope,
                                                       "train.accumulate=" + std::to_string(accumulate)}),
                           run.path()};
      request.quiet = true;
      EXPECT_TRUE(train_model(request).finished);
      return moelab::testing::training_losses(run.path());
    };
    const auto whole = losses(1), split = losses(3);
    ASSERT_EQ(whole.size(), 6u);
    ASSERT_EQ(split.size(), whole.size());
    for (size_t i = 0; i < whole.size(); ++i)
      EXPECT_NEAR(split[i], whole[i], 1e-5 * whole[i]) << scope << ", step " << i + 1;
  }
}

// A corpus without test* files trains and validates; its data line and summary say there is no test
// set instead of scoring an empty one.
TEST(Translation, ACorpusWithoutATestSetTrainsAndSaysSo) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data, run;
  make_parallel_corpus(data.path(), 60);
  std::filesystem::remove(data.file("test_2016.de"));
  std::filesystem::remove(data.file("test_2016.en"));
  const auto config = corpus_config(data.path(), {"train.steps=4", "model.hidden=32", "moe.expert_hidden=32"});
  const DistributedRun distributed(config);
  const auto task = make_training_task({config, torch::Device(torch::kCPU), distributed, std::nullopt, ""});
  const auto described = task->describe_data();
  EXPECT_NE(described.find(", 40 validation, no test set;"), std::string::npos) << described;
  EXPECT_FALSE(task->has_split("test"));
  TrainRequest request{config, run.path()};
  request.quiet = true;
  const auto result = train_model(request);
  ASSERT_TRUE(result.finished);
  EXPECT_TRUE(result.summary.contains("valid_bleu")) << result.summary.dump(2);
  EXPECT_FALSE(result.summary.contains("test_bleu")) << result.summary.dump(2);
}

TEST(Translation, BadDataGivesOneLineErrorsNamingTheFileAndLine) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data;
  make_parallel_corpus(data.path(), 30);
  auto expect_error = [&](const Config& config, const std::string& needle) {
    TempDir run;
    TrainRequest request{config, run.path()};
    request.quiet = true;
    try {
      train_model(request);
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const Error& error) {
      const std::string message = error.what();
      EXPECT_NE(message.find(needle), std::string::npos) << message;
      EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
  };
  // An unknown language pair lists the languages there are.
  expect_error(corpus_config(data.path(), {"data.src_lang=fr"}), "train.fr");
  // A missing SentencePiece model.
  expect_error(corpus_config(data.path(), {"data.spm=" + data.file("missing.model")}), "missing.model");
  // Mismatched line counts.
  {
    std::ofstream(data.file("val.en"), std::ios::app) << "one line too many\n";
    expect_error(corpus_config(data.path()), data.file("val.en") + ":41: no line 41 in " + data.file("val.de"));
  }
  // An empty line names file and line.
  {
    TempDir other;
    make_parallel_corpus(other.path(), 30);
    auto text = moelab::testing::read_file(other.file("train.de"));
    const auto second_line = text.find('\n') + 1;
    text.replace(second_line, text.find('\n', second_line) - second_line, "");
    write_file(other.file("train.de"), text);
    expect_error(corpus_config(other.path()), "train.de:2");
  }
}

TEST(Translation, NoDecoderPositionSeesALaterTargetTokenWithAnyRouter) {
  const int64_t vocab = 20, t = 2, column = 1;
  auto cases = moelab::testing::router_settings();
  // Capacities small enough that experts overflow: drops must go by earlier tokens only.
  cases["topk, position drops"] = {"moe.router=topk", "moe.capacity_factor=0.5"};
  for (const auto& backbone : backbones()) {
    for (const auto& [router, settings] : cases) {
      SCOPED_TRACE(backbone.front() + " / " + router);
      auto overrides = backbone;
      if (router.find(',') == std::string::npos) overrides.push_back("moe.router=" + router);
      for (const auto& s : settings) overrides.push_back(s);
      auto model = eval_model(translation_config(overrides), vocab, 9);
      torch::NoGradGuard no_grad;
      const auto sources = random_sources({5, 7, 4}, vocab, 8);
      const auto encoded = model->encode(sources.tokens, sources.lengths);
      const auto target = torch::randint(4, vocab, {6, 3}, torch::kInt64);
      auto changed = target.clone();
      changed.narrow(0, t + 1, 6 - t - 1).select(1, column).random_(4, vocab);
      const auto padding = torch::zeros({6, 3}, torch::kBool);
      const auto a = model->decode(encoded, target, padding).features.narrow(0, 0, t + 1).select(1, column);
      const auto b = model->decode(encoded, changed, padding).features.narrow(0, 0, t + 1).select(1, column);
      EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6));
    }
  }
}

TEST(Translation, EveryExpertBankTrainsInBothBackbones) {
  const std::map<std::string, std::vector<std::string>> bank_settings = {
      {"ffn", {}},
      {"low_rank", {"moe.rank=4"}},
      {"shared_projection", {"moe.rank=4"}},
      {"lora", {"moe.rank=4"}},
      {"mpo", {"moe.model_factors=[2,4,2]", "moe.hidden_factors=[2,3,2]", "moe.bond=4"}},
      {"tensor_train", {"moe.model_factors=[4,4]", "moe.hidden_factors=[3,4]", "moe.rank=4"}}};
  ASSERT_EQ(bank_settings.size(), expert_bank_names().size());
  for (const auto& backbone : backbones())
    for (const auto& [bank, settings] : bank_settings) {
      SCOPED_TRACE(backbone.front() + " / " + bank);
      auto overrides = backbone;
      overrides.push_back("moe.bank=" + bank);
      for (const auto& s : settings) overrides.push_back(s);
      torch::manual_seed(12);
      auto model = make_translation_model(translation_config(overrides), 20, 20);
      const auto sources = random_sources({4, 6}, 20, 13);
      auto target_input = torch::randint(4, 20, {5, 2}, torch::kInt64);
      const auto padding = torch::zeros({5, 2}, torch::kBool);
      const auto encoded = model->encode(sources.tokens, sources.lengths);
      const auto decoded = model->decode(encoded, target_input, padding);
      auto loss = label_smoothed_nll(model->log_probs(decoded.features), torch::randint(4, 20, {10}, torch::kInt64), 0.1);
      loss = loss + encoded.moe.aux_loss + decoded.moe.aux_loss;
      loss.backward();
      EXPECT_TRUE(std::isfinite(loss.item<double>()));
      for (const auto& layer : model->moe_layers()) {
        double gradient = 0;
        for (const auto& p : layer.layer->experts->parameters())
          if (p.grad().defined()) gradient += p.grad().abs().sum().item<double>();
        EXPECT_GT(gradient, 0.0) << layer.name;
      }
    }
}

// `moelab bench --only task` times a translation step as the trainer runs it, and says what is
// missing when given no config.
TEST(Translation, BenchTimesItsTrainingStepThroughTheTaskInterface) {
  if (!sentencepiece_available()) GTEST_SKIP() << "moelab was built without SentencePiece";
  TempDir data, out;
  auto config = corpus_config(make_parallel_corpus(data.path(), 60), {"model.hidden=32", "moe.expert_hidden=32"});
  write_file(out.file("translation.toml"), config.to_toml());
  const auto r = moelab::testing::run_moelab("bench --only task --task-config " + moelab::testing::sq(out.file("translation.toml")) +
                                             " --samples 2 --warmup 1 --threads 1 --json " + moelab::testing::sq(out.file("rows.json")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("### task_train_step"), std::string::npos) << r.output;
  const auto rows = nlohmann::json::parse(moelab::testing::read_file(out.file("rows.json")));
  const DistributedRun run(config);
  const auto task = make_training_task({config, torch::Device(torch::kCPU), run, std::nullopt, ""});
  const double expected_flops = task->summary_fields()["flops_per_source_target_token"].get<double>();
  int task_rows = 0;
  for (const auto& row : rows) {
    if (row.value("case", "") != "task_train_step") continue;
    ++task_rows;
    EXPECT_EQ(row.value("task", ""), "translation");
    EXPECT_GT(row.value("tokens_per_step", 0.0), 0.0);
    EXPECT_GT(row.value("tokens_per_s", 0.0), 0.0);
    EXPECT_GT(row.value("ms", 0.0), 0.0);
    // FLOPs per source-or-target token, the tokens its batches count.
    EXPECT_EQ(row.value("flops_per_token", int64_t{0}), static_cast<int64_t>(expected_flops));
    EXPECT_GT(row.value("fraction_of_sgemm", 0.0), 0.0);
  }
  EXPECT_EQ(task_rows, 1) << rows.dump(1);
  // Profiling trains three more steps; they count in no figure of the row.
  const auto profiled = moelab::testing::run_moelab(
      "bench --only task --task-config " + moelab::testing::sq(out.file("translation.toml")) +
      " --samples 2 --warmup 1 --threads 1 --profile " + moelab::testing::sq(out.file("profile.md")) + " --json " +
      moelab::testing::sq(out.file("profiled.json")));
  ASSERT_EQ(profiled.exit_code, 0) << profiled.output;
  for (const auto& row : nlohmann::json::parse(moelab::testing::read_file(out.file("profiled.json")))) {
    if (row.value("case", "") != "task_train_step") continue;
    for (const auto& plain : rows) {
      if (plain.value("case", "") == "task_train_step") {
        EXPECT_EQ(row.value("tokens_per_step", 0.0), plain.value("tokens_per_step", 0.0));
      }
    }
  }

  const auto missing = moelab::testing::run_moelab("bench --only task");
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_NE(missing.output.find("--task-config"), std::string::npos) << missing.output;
}
