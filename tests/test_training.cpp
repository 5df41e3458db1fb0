// End-to-end training on a tiny made corpus: learning, checkpoint round trip, kill and resume.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <fstream>
#include <map>
#include <random>

#include "moelab/data/text_corpus.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/evaluate.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/trainer.h"
#include "moelab/util/error.h"
#include "test_util.h"

using namespace moelab;
using moelab::testing::TempDir;
using moelab::testing::training_losses;

namespace {

// Sentences from a tiny grammar: the next word is mostly predictable from the previous ones, so a
// model that learns anything beats the unigram entropy by a wide margin.
std::string make_sentences(int count, uint32_t seed) {
  const std::vector<std::string> subjects = {"the cat", "a dog", "the bird", "my friend"};
  const std::vector<std::string> verbs = {"sees", "likes", "follows"};
  const std::vector<std::string> objects = {"the tree", "a red ball", "the old house", "the river"};
  std::mt19937 rng(seed);
  std::string text;
  for (int i = 0; i < count; ++i) {
    text += subjects[rng() % subjects.size()] + " " + verbs[rng() % verbs.size()] + " " +
            objects[rng() % objects.size()] + " .\n";
  }
  return text;
}

std::string make_corpus(const TempDir& dir) {
  moelab::testing::write_file(dir.file("train.txt"), make_sentences(400, 1));
  moelab::testing::write_file(dir.file("valid.txt"), make_sentences(60, 2));
  moelab::testing::write_file(dir.file("test.txt"), make_sentences(60, 3));
  return dir.path();
}

Config tiny_config(const std::string& corpus) {
  auto config = Config::defaults();
  for (const char* assignment :
       {"model.embed=24", "model.hidden=24", "moe.experts=4", "moe.k=2", "moe.expert_hidden=16", "model.dropout=0.0",
        "train.batch=8", "train.bptt=10", "train.lr=0.01", "train.optimizer=adam", "train.warmup=5", "train.threads=1", "train.log_every=1",
        "train.checkpoint_every=4"})
    config.apply_override(assignment);
  config.set("data.corpus", corpus);
  return config;
}

// A quiet tiny run with these overrides on top of tiny_config.
TrainResult train_tiny(const std::string& corpus_dir, const std::string& run_dir,
                       const std::vector<std::string>& overrides) {
  auto config = tiny_config(corpus_dir);
  for (const auto& o : overrides) config.apply_override(o);
  TrainRequest request{config, run_dir};
  request.quiet = true;
  return train_model(request);
}

double unigram_entropy(const torch::Tensor& stream) {
  std::map<int64_t, double> counts;
  const auto* ids = stream.data_ptr<int64_t>();
  for (int64_t i = 0; i < stream.numel(); ++i) counts[ids[i]] += 1;
  double entropy = 0;
  for (const auto& [id, c] : counts) {
    const double p = c / static_cast<double>(stream.numel());
    entropy -= p * std::log(p);
  }
  return entropy;
}

}  // namespace

TEST(Training, BaselinesTrainThroughConfigAlone) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  for (const char* middle : {"moe.experts=0", "moe.layer=dense", "moe.layer=deep", "model.middle_norm=pre",
                             "model.middle_norm=post", "train.optimizer=adagrad", "train.optimizer=sgd"}) {
    TempDir run;
    auto config = tiny_config(corpus_dir);
    config.apply_override("train.steps=3");
    config.apply_override(middle);
    TrainRequest request{config, run.path()};
    request.quiet = true;
    const auto result = train_model(request);
    EXPECT_TRUE(result.finished) << middle;
    EXPECT_TRUE(std::isfinite(result.summary["valid_ppl"].get<double>())) << middle;
    if (std::string(middle).rfind("moe.", 0) != 0) continue;  // the dense baselines have no router
    EXPECT_TRUE(result.summary["moe_layers"].empty()) << middle;
    EXPECT_EQ(result.summary["params_total"], result.summary["params_active_per_token"]) << middle;
  }
}

// Aux-loss-free balancing: after training, each expert's bias is a whole number of rate-sized
// steps (one per optimizer step, up, down or none) and is in the checkpoint.
TEST(Training, AuxFreeBiasesMoveOncePerStepAndAreCheckpointed) {
  TempDir data, run;
  auto config = tiny_config(make_corpus(data));
  for (const char* o : {"moe.router=aux_free", "moe.bias_update_rate=0.25", "moe.balance.importance=0",
                        "moe.balance.load=0", "train.steps=5"})
    config.apply_override(o);
  TrainRequest request{config, run.path()};
  request.quiet = true;
  ASSERT_TRUE(train_model(request).finished);
  const auto loaded = load_run(run.path());
  torch::Tensor bias;
  for (const auto& item : loaded.model->named_buffers())
    if (item.key().find("expert_bias") != std::string::npos) bias = item.value();
  ASSERT_TRUE(bias.defined());
  const auto steps = bias / 0.25;
  EXPECT_TRUE(torch::allclose(steps, steps.round(), 0, 1e-5)) << bias;
  EXPECT_LE(steps.abs().max().item<double>(), 5.0) << bias;
  EXPECT_GT(steps.abs().max().item<double>(), 0.0) << bias;  // some expert was off the mean load
}

TEST(Training, ReluRoutingMovesItsL1CoefficientOncePerStepAndCheckpointsIt) {
  TempDir data, run;
  auto config = tiny_config(make_corpus(data));
  for (const char* o : {"moe.router=relu", "moe.relu_l1_init=0.01", "moe.relu_l1_rate=2", "moe.balance.importance=0",
                        "moe.balance.load=0", "train.steps=5"})
    config.apply_override(o);
  TrainRequest request{config, run.path()};
  request.quiet = true;
  const auto result = train_model(request);
  ASSERT_TRUE(result.finished);
  const auto loaded = load_run(run.path());
  torch::Tensor lambda;
  for (const auto& item : loaded.model->named_buffers())
    if (item.key().find("l1_coefficient") != std::string::npos) lambda = item.value();
  ASSERT_TRUE(lambda.defined());
  // Five steps, each a factor 2 up or down: 0.01 * 2^j with |j| <= 5 and j odd.
  const double j = std::log2(lambda.item<double>() / 0.01);
  EXPECT_NEAR(j, std::round(j), 1e-9);
  EXPECT_LE(std::abs(j), 5.0);
  EXPECT_EQ(std::abs(std::llround(j)) % 2, 1);
  // The summary says how many experts the tokens actually used, and what that cost.
  const auto& layer = result.summary["moe_layers"][0];
  EXPECT_GT(layer["experts_per_token"].get<double>(), 0.0);
  EXPECT_EQ(layer["flops_per_token_measured"].get<int64_t>(),
            loaded.model->moe_layers()[0].layer->flops_per_token_at(layer["experts_per_token"].get<double>()));
}

// Gradient accumulation (issue 19 item 2): two micro-batches of half the columns, one optimizer
// step on their summed gradients, train like the whole batch at once (no noise, no balancing loss:
// both would see each half on its own).
TEST(Training, TwoMicroBatchesTrainLikeTheWholeBatch) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  auto losses = [&](int64_t accumulate) {
    TempDir run;
    const auto result = train_tiny(corpus_dir, run.path(),
                                   {"moe.noisy=false", "moe.balance.importance=0", "moe.balance.load=0",
                                    "train.steps=6", "train.accumulate=" + std::to_string(accumulate)});
    EXPECT_TRUE(result.finished);
    EXPECT_EQ(result.summary["tokens_per_step"].get<int64_t>(), 8 * 10);
    return moelab::testing::training_losses(run.path());
  };
  const auto whole = losses(1), halves = losses(2);
  ASSERT_EQ(whole.size(), 6u);
  ASSERT_EQ(halves.size(), whole.size());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(halves[i], whole[i], 1e-4 * whole[i]) << "step " << i + 1;
  TempDir run;
  EXPECT_THROW(train_tiny(corpus_dir, run.path(), {"train.accumulate=3"}), moelab::Error);  // 8 columns
}

TEST(Training, FineGrainedNullExpertAndPriorityLayersTrainWithoutNan) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  const std::vector<std::vector<std::string>> cases = {
      {"moe.granularity=2", "moe.shared_experts=1", "moe.router=topk_mask", "moe.balance.load=0"},
      {"moe.null_experts=2", "moe.router=topk_mask", "moe.balance.load=0", "moe.balance.switch=0.01"},
      {"moe.capacity_factor=0.75", "moe.capacity_drop=priority", "moe.balance.load=0", "moe.router=topk_mask"},
      {"moe.balance.scope=global", "train.accumulate=2", "moe.router=topk_mask", "moe.balance.load=0",
       "moe.balance.switch=0.01"},
      // DeepSeek-V3: bias balancing plus the complementary sequence-wise loss.
      {"moe.balance.sequence=0.01", "moe.router=aux_free", "moe.balance.importance=0", "moe.balance.load=0"},
  };
  for (const auto& settings : cases) {
    SCOPED_TRACE(settings.front());
    TempDir run;
    auto overrides = settings;
    overrides.push_back("train.steps=4");
    const auto result = train_tiny(corpus_dir, run.path(), overrides);
    ASSERT_TRUE(result.finished);
    EXPECT_TRUE(std::isfinite(result.summary["valid_ppl"].get<double>()));
    const auto& layer = result.summary["moe_layers"][0];
    for (const char* key : {"maxvio", "maxvio_batch", "experts_per_token", "top20_load", "bottom20_load"})
      EXPECT_TRUE(layer.contains(key)) << key;
  }
}

TEST(Training, EveryRouterTrainsWithoutNanAndLogsItsRoutingStatistics) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  const auto& routers = moelab::testing::router_settings();
  for (const auto& [router, settings] : routers) {
    SCOPED_TRACE(router);
    TempDir run;
    std::vector<std::string> overrides = {"train.steps=4", "train.log_every=2", "moe.router=" + router};
    overrides.insert(overrides.end(), settings.begin(), settings.end());
    const auto result = train_tiny(corpus_dir, run.path(), overrides);
    ASSERT_TRUE(result.finished);
    EXPECT_TRUE(std::isfinite(result.summary["valid_ppl"].get<double>()));
    int logged = 0;
    std::ifstream metrics(run.file("metrics.jsonl"));
    for (std::string line; std::getline(metrics, line);) {
      const auto record = nlohmann::json::parse(line);
      if (!record.contains("loss")) continue;
      ++logged;
      EXPECT_TRUE(std::isfinite(record["loss"].get<double>()));
      ASSERT_EQ(record["moe_layers"].size(), 1u);
      const auto& stats = record["moe_layers"][0];
      for (const char* key : {"expert_load", "load_cv", "importance_cv", "max_mean_load", "dropped_frac",
                              "unused_experts"})
        EXPECT_TRUE(stats.contains(key)) << key;
      // Hash routing has no logits; the hierarchical router builds its [N, E] logits only for the z
      // and switch losses (off here), so neither reports an entropy.
      EXPECT_EQ(stats.contains("routing_entropy"), router != "hash" && router != "hierarchical");
      EXPECT_EQ(stats["expert_load"].size(), 4u);
    }
    EXPECT_EQ(logged, 2);
  }
}

TEST(Training, DenseBaselineMatchesActiveExpertWidth) {
  auto config = Config::defaults();
  config.apply_override("moe.layer=dense");
  auto dense = build_language_model(config, 100);
  ASSERT_TRUE(dense->dense);
  EXPECT_EQ(dense->dense->options.hidden_dim(), config.get_int("moe.k") * config.get_int("moe.expert_hidden"));
  auto moe = build_language_model(Config::defaults(), 100);
  // The MoE model's active FLOPs exceed the dense model's only by the router.
  int64_t moe_flops = 0, dense_flops = 0;
  for (const auto& row : moe->costs()) moe_flops += row.flops;
  for (const auto& row : dense->costs()) dense_flops += row.flops;
  EXPECT_EQ(moe_flops - dense_flops, moe->moe->router->flops_per_token());
}

TEST(Training, DeepBaselineCostsTheWideOnesFlopsWithinOneHiddenUnit) {
  auto wide_config = Config::defaults();
  wide_config.apply_override("moe.layer=dense");
  const auto wide = build_language_model(wide_config, 100);
  for (int64_t layers : {1, 2, 4}) {
    SCOPED_TRACE(layers);
    auto config = wide_config;
    config.apply_override("moe.layer=deep");
    config.apply_override("moe.deep_layers=" + std::to_string(layers));
    const auto deep = build_language_model(config, 100);
    ASSERT_TRUE(deep->dense);
    const auto& o = deep->dense->options;
    EXPECT_EQ(o.hidden_layers(), layers);
    EXPECT_EQ(deep->dense->middle ? deep->dense->middle->size() : 0u, static_cast<size_t>(layers - 1));
    // One hidden unit more or less changes the stack's FLOPs by 4D + 4(n-1)H: the chosen width is
    // within that step of the wide block's FLOPs.
    const int64_t step = 4 * o.model_dim() + 4 * (layers - 1) * o.hidden_dim() + 2 * (layers - 1);
    EXPECT_LE(std::abs(deep->dense->flops_per_token() - wide->dense->flops_per_token()), step);
    // The written-out count of a stack D -> H -> ... -> H -> D: two FLOPs per multiply-add.
    const int64_t d = o.model_dim(), h = o.hidden_dim();
    EXPECT_EQ(deep->dense->flops_per_token(), 2 * (d * h + (layers - 1) * h * h + h * d));
  }
  auto fixed = wide_config;
  fixed.apply_override("moe.layer=deep");
  fixed.apply_override("moe.deep_hidden=37");
  EXPECT_EQ(build_language_model(fixed, 100)->dense->options.hidden_dim(), 37);
  for (const char* bad : {"model.arch=transformer", "model.task=tagging"}) {
    auto config = fixed;
    config.apply_override(bad);
    EXPECT_THROW(config.validate(), Error) << bad;
    auto normed = Config::defaults();
    normed.apply_override(bad);
    normed.apply_override("model.middle_norm=pre");
    EXPECT_THROW(normed.validate(), Error) << bad;
  }
}

TEST(Training, MiddleNormPutsTheLayerNormBeforeTheMiddleLayerOrAfterTheResidualSum) {
  torch::manual_seed(3);
  const auto tokens = torch::randint(100, {5, 3});
  for (const char* where : {"pre", "post"}) {
    SCOPED_TRACE(where);
    for (const char* layer : {"dense", "moe"}) {
      SCOPED_TRACE(layer);
      auto config = Config::defaults();
      config.apply_override(std::string("moe.layer=") + layer);
      config.apply_override("moe.router=topk");
      config.apply_override("moe.balance.load=0");
      config.apply_override(std::string("model.middle_norm=") + where);
      config.apply_override("model.dropout=0");
      auto model = build_language_model(config, 100);
      model->eval();
      ASSERT_TRUE(model->middle_norm);
      // Written out: LSTM below, then x + f(LN(x)) or LN(x + f(x)), then the LSTM above.
      torch::NoGradGuard no_grad;
      const auto below = std::get<0>(model->lstm_before->forward(model->embedding(tokens)));
      const auto x = below.reshape({-1, below.size(-1)});
      auto middle = [&](const torch::Tensor& in) {
        return model->dense ? model->dense(in) : model->moe(in, tokens.reshape({-1})).output;
      };
      const auto mixed = std::string(where) == "pre" ? x + middle(model->middle_norm(x))
                                                     : model->middle_norm(x + middle(x));
      const auto above = std::get<0>(model->lstm_after->forward(mixed.view(below.sizes())));
      EXPECT_TRUE(torch::allclose(model->forward(tokens).features, above, 1e-5, 1e-6));
    }
  }
}

TEST(Training, CheckpointRoundTripReproducesOutputsExactly) {
  // Every kind of middle layer and bank: submodule and parameter names must survive LibTorch's
  // archive format (a module registered as "in" once made dense checkpoints unreadable).
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"moe.layer=dense"},
      {"moe.experts=0"},
      {"moe.shared_experts=1"},
      {"moe.bank=low_rank", "moe.rank=4"},
      {"moe.bank=shared_projection", "moe.rank=4"},
      {"moe.bank=lora", "moe.rank=4"},
      {"moe.bank=mpo", "moe.model_factors=[2,4,2]", "moe.hidden_factors=[2,2,2]", "moe.bond=4"},
      {"moe.bank=tensor_train", "moe.model_factors=[4,4]", "moe.hidden_factors=[2,4]", "moe.rank=3"},
      {"moe.router=hierarchical", "moe.groups=2", "moe.experts=4", "moe.k=2"},
  };
  for (const auto& overrides : variants) {
    SCOPED_TRACE(overrides.empty() ? std::string("default") : overrides.front());
    TempDir dir;
    torch::manual_seed(5);
    auto config = Config::defaults();
    config.apply_override("model.embed=16");
    config.apply_override("model.hidden=16");
    config.apply_override("moe.expert_hidden=8");
    for (const auto& assignment : overrides) config.apply_override(assignment);
    auto model = build_language_model(config, 50);
    const auto tokens = torch::randint(0, 50, {7, 3}, torch::kInt64);
    model->eval();
    const auto before = model->log_probs(model->forward(tokens).features);
    save_checkpoint(dir.file("c.pt"), *model, nullptr, {}, {3, config.to_toml(), "<eos>\n<unk>\n"});
    torch::manual_seed(6);  // a different initialisation, overwritten by the load
    auto restored = build_language_model(config, 50);
    ASSERT_NO_THROW(load_checkpoint(dir.file("c.pt"), *restored, nullptr, nullptr, false));
    restored->eval();
    const auto after = restored->log_probs(restored->forward(tokens).features);
    EXPECT_TRUE(torch::equal(before, after));
    EXPECT_EQ(read_checkpoint_meta(dir.file("c.pt")).step, 3);
  }
}

TEST(Training, KillAndResumeGivesTheSameLossSequence) {
  // Adam; the factored optimiser (its state must survive the checkpoint); MPO experts with a
  // gradient mask under SGD with momentum (the masked steps must be the same after the resume); the
  // Transformer.
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"train.optimizer=factored", "train.lr=0.01"},
      {"moe.bank=mpo", "moe.model_factors=[2,12,1]", "moe.hidden_factors=[2,4,2]", "moe.bond=4",
       "moe.central_update_p=0.5", "train.optimizer=sgd", "train.momentum=0.9", "train.lr=1.0"},
      // The Transformer with dropout (the generator state must survive the checkpoint) under AdamW.
      {"model.arch=transformer", "model.hidden=24", "model.heads=2", "model.layers=2", "model.context=10",
       "model.tie_weights=true", "model.dropout=0.1", "train.optimizer=adamw", "train.weight_decay=0.01",
       "train.lr=0.003"},
  };
  for (const auto& overrides : variants) {
    SCOPED_TRACE(overrides.empty() ? std::string("adam") : overrides.front());
    TempDir data, whole, killed;
    auto config = tiny_config(make_corpus(data));
    config.apply_override("train.steps=12");
    for (const auto& assignment : overrides) config.apply_override(assignment);
    TrainRequest uninterrupted{config, whole.path()};
    uninterrupted.quiet = true;
    const auto reference = train_model(uninterrupted);

    // "Killed" after step 7: the last checkpoint is step 4, so steps 5-7 are lost and redone.
    TrainRequest first{config, killed.path()};
    first.quiet = true;
    first.stop_after_step = 7;
    EXPECT_FALSE(train_model(first).finished);
    EXPECT_EQ(read_checkpoint_meta(killed.file("checkpoint.pt")).step, 4);
    TrainRequest second{config, killed.path()};
    second.quiet = true;
    second.resume = true;
    const auto resumed = train_model(second);
    ASSERT_TRUE(resumed.finished);

    const auto expected = training_losses(whole.path());
    const auto actual = training_losses(killed.path());
    ASSERT_EQ(expected.size(), 12u);
    ASSERT_EQ(actual.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(actual[i], expected[i]) << "step " << i + 1;
    EXPECT_EQ(resumed.summary["valid_ppl"], reference.summary["valid_ppl"]);
  }
}

TEST(Training, ACorruptNewestCheckpointFallsBackToThePreviousOne) {
  // Checkpoints at steps 4 and 8 of a run "killed" after step 9: checkpoint.pt is step 8 and
  // checkpoint.pt.prev step 4. Each way of spoiling the newest (cut short, overwritten in the middle,
  // gone) makes a resume continue from step 4 with a one-line warning, and the run ends with the
  // same losses as one never interrupted.
  TempDir data, whole;
  auto config = tiny_config(make_corpus(data));
  config.apply_override("train.steps=12");
  TrainRequest uninterrupted{config, whole.path()};
  uninterrupted.quiet = true;
  const auto reference = train_model(uninterrupted);
  const auto expected = training_losses(whole.path());
  for (const std::string& damage : {std::string("truncate"), std::string("overwrite"), std::string("remove")}) {
    SCOPED_TRACE(damage);
    TempDir killed;
    TrainRequest first{config, killed.path()};
    first.quiet = true;
    first.stop_after_step = 9;
    EXPECT_FALSE(train_model(first).finished);
    const auto newest = killed.file("checkpoint.pt");
    EXPECT_EQ(read_checkpoint_meta(newest).step, 8);
    EXPECT_EQ(read_checkpoint_meta(previous_checkpoint_path(newest)).step, 4);
    const auto size = std::filesystem::file_size(newest);
    if (damage == "truncate") {
      std::filesystem::resize_file(newest, size / 2);
    } else if (damage == "overwrite") {
      std::fstream file(newest, std::ios::in | std::ios::out | std::ios::binary);
      file.seekp(static_cast<std::streamoff>(size / 3));
      const std::string junk(static_cast<size_t>(size / 3), '\x5a');
      file.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    } else {
      std::filesystem::remove(newest);
    }
    const auto found = find_checkpoint(newest);
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(found->path, previous_checkpoint_path(newest));
    EXPECT_EQ(found->meta.step, 4);
    EXPECT_EQ(load_run(killed.path()).step, 4);  // eval and friends read the fallback too
    TrainRequest second{config, killed.path()};
    second.quiet = true;
    second.resume = true;
    const auto resumed = train_model(second);
    ASSERT_TRUE(resumed.finished);
    EXPECT_EQ(training_losses(killed.path()), expected);
    EXPECT_EQ(resumed.summary["valid_ppl"], reference.summary["valid_ppl"]);
    EXPECT_EQ(read_checkpoint_meta(newest).step, 12);
    EXPECT_EQ(std::filesystem::exists(newest + ".unreadable"), damage != "remove");
  }
  // Both spoilt: one line naming both problems, no crash.
  TempDir broken;
  moelab::testing::write_file(broken.file("checkpoint.pt"), "not a checkpoint");
  moelab::testing::write_file(broken.file("checkpoint.pt.prev"), "");
  try {
    find_checkpoint(broken.file("checkpoint.pt"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("the previous one is unusable too"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(Training, ADamagedCheckpointIsRefusedBeforeLibTorchReadsIt) {
  TempDir dir;
  auto config = Config::defaults();
  for (const char* a : {"model.embed=16", "model.hidden=16", "moe.expert_hidden=8"}) config.apply_override(a);
  auto model = build_language_model(config, 50);
  save_checkpoint(dir.file("c.pt"), *model, nullptr, {}, {3, config.to_toml(), ""});
  const auto bytes = moelab::testing::read_file(dir.file("c.pt"));
  ASSERT_EQ(bytes.substr(0, 8), "MOELABCK");
  auto message_of = [&](const std::string& damaged) {
    moelab::testing::write_file(dir.file("d.pt"), damaged);
    try {
      read_checkpoint_meta(dir.file("d.pt"));
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  // One bit flipped in tensor data, which LibTorch's own reader would load without a word.
  auto flipped = bytes;
  flipped[bytes.size() * 2 / 3] ^= 0x10;
  EXPECT_NE(message_of(flipped).find("its checksum does not match"), std::string::npos) << message_of(flipped);
  EXPECT_NE(message_of(bytes.substr(0, bytes.size() - 1)).find("its header says"), std::string::npos);
  EXPECT_NE(message_of(bytes + "x").find("its header says"), std::string::npos);
  EXPECT_NE(message_of(bytes.substr(0, 10)).find("not a moelab checkpoint"), std::string::npos);
  EXPECT_EQ(message_of(bytes), "no error");
  // A checkpoint of an older moelab (LibTorch's archive alone) is read only when asked for.
  {
    torch::serialize::OutputArchive archive;
    archive.write("format_version", c10::IValue(int64_t{1}));
    archive.write("step", c10::IValue(int64_t{5}));
    archive.write("config", c10::IValue(config.to_toml()));
    archive.write("vocabulary", c10::IValue(std::string("")));
    archive.save_to(dir.file("old.pt"));
  }
  unsetenv("MOELAB_ALLOW_UNCHECKED_CHECKPOINTS");
  EXPECT_NE(message_of(moelab::testing::read_file(dir.file("old.pt"))).find("MOELAB_ALLOW_UNCHECKED_CHECKPOINTS=1"),
            std::string::npos);
  setenv("MOELAB_ALLOW_UNCHECKED_CHECKPOINTS", "1", 1);
  EXPECT_EQ(read_checkpoint_meta(dir.file("old.pt")).step, 5);
  unsetenv("MOELAB_ALLOW_UNCHECKED_CHECKPOINTS");
}

TEST(Training, ACheckpointForAnotherShapeIsRefusedNamingTheTensor) {
  TempDir dir;
  auto config = Config::defaults();
  for (const char* a : {"model.embed=16", "model.hidden=16", "moe.expert_hidden=8"}) config.apply_override(a);
  auto model = build_language_model(config, 50);
  save_checkpoint(dir.file("c.pt"), *model, nullptr, {}, {3, config.to_toml(), ""});
  auto wider_experts = config;
  wider_experts.apply_override("moe.expert_hidden=12");  // same names, other shapes (and same size(0))
  auto other = build_language_model(wider_experts, 50);
  try {
    load_checkpoint(dir.file("c.pt"), *other, nullptr, nullptr, false);
    ADD_FAILURE() << "loaded a checkpoint of another shape";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("tensor moe.experts.b_in has shape [16, 8], the model expects [16, 12]"), std::string::npos)
        << message;
  }
}

TEST(Training, LoadRunEvaluatesLikeTheTrainer) {
  TempDir data, run;
  auto config = tiny_config(make_corpus(data));
  config.apply_override("train.steps=5");
  TrainRequest request{config, run.path()};
  request.quiet = true;
  const auto result = train_model(request);
  auto loaded = load_run(run.path());
  EXPECT_EQ(loaded.step, 5);
  EXPECT_EQ(loaded.config.to_toml(), config.to_toml());
  const auto valid = load_split(data.file("valid.txt"), loaded.vocabulary);
  const auto eval = evaluate_language_model(*loaded.model, valid, config.get_int("train.eval_batch"),
                                            config.get_int("train.bptt"), 0, nullptr);
  EXPECT_NEAR(eval.perplexity, result.summary["valid_ppl"].get<double>(), 1e-9);
}

TEST(LanguageModel, AdaptiveAndTiedSoftmaxAreNormalisedAndConsistentWithTheLoss) {
  for (const char* variant : {"model.softmax=adaptive", "model.tie_weights=true", "model.softmax=full"}) {
    torch::manual_seed(8);
    auto config = Config::defaults();
    for (const char* a : {"model.embed=12", "model.hidden=16", "moe.expert_hidden=8", "model.adaptive_cutoffs=[10,30]"})
      config.apply_override(a);
    config.apply_override(variant);
    auto model = build_language_model(config, 60);
    model->eval();
    const auto tokens = torch::randint(0, 60, {5, 3}, torch::kInt64);
    const auto targets = torch::randint(0, 60, {5, 3}, torch::kInt64);
    const auto out = model->forward(tokens);
    const auto log_probs = model->log_probs(out.features);  // [15, 60]
    EXPECT_TRUE(torch::allclose(log_probs.exp().sum(1), torch::ones({15}), 1e-4, 1e-5)) << variant;
    const auto expected = -log_probs.gather(1, targets.reshape({-1, 1})).mean();
    EXPECT_NEAR(model->loss(out.features, targets).item<double>(), expected.item<double>(), 1e-5) << variant;
  }
  // Tying shares one tensor: the untied model has exactly one more [V, embed] matrix.
  auto untied_config = Config::defaults();
  untied_config.apply_override("model.embed=128");  // != hidden, so tying needs a projection
  auto tied_config = untied_config;
  tied_config.apply_override("model.tie_weights=true");
  int64_t tied = 0, untied = 0;
  for (const auto& p : build_language_model(tied_config, 60)->parameters()) tied += p.numel();
  for (const auto& p : build_language_model(untied_config, 60)->parameters()) untied += p.numel();
  const int64_t embed = tied_config.get_int("model.embed"), hidden = tied_config.get_int("model.hidden");
  // untied: output [V, hidden] + bias; tied: projection hidden->embed (+bias) + output bias.
  EXPECT_EQ(untied - tied, 60 * hidden + 60 - (hidden * embed + embed + 60));
}

namespace {

Config tiny_transformer_config(const std::string& corpus) {
  auto config = tiny_config(corpus);
  for (const char* assignment :
       {"model.arch=transformer", "model.hidden=24", "model.heads=2", "model.layers=2", "model.context=10",
        "model.tie_weights=true", "moe.every=1", "train.optimizer=adamw", "train.weight_decay=0.01", "train.lr=0.003",
        "train.clip=1.0"})
    config.apply_override(assignment);
  return config;
}

}  // namespace

TEST(Training, BothBackbonesLearnWellBelowUnigramEntropyAndReportEveryMoELayer) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  const auto corpus = load_text_corpus(corpus_dir, {});
  const double entropy = unigram_entropy(corpus.valid);
  for (const std::string arch : {"lstm", "transformer"}) {
    SCOPED_TRACE(arch);
    TempDir run;
    auto config = arch == "lstm" ? tiny_config(corpus_dir) : tiny_transformer_config(corpus_dir);
    config.apply_override("train.steps=150");
    TrainRequest request{config, run.path()};
    request.quiet = true;
    const auto result = train_model(request);
    ASSERT_TRUE(result.finished);
    // The grammar's conditional entropy is ~1 nat below the unigram entropy (~2.5 nats).
    EXPECT_LT(result.summary["valid_loss"].get<double>(), entropy - 0.8) << "unigram entropy " << entropy;
    const std::vector<std::string> names =
        arch == "lstm" ? std::vector<std::string>{"moe"} : std::vector<std::string>{"blocks.0.moe", "blocks.1.moe"};
    ASSERT_EQ(result.summary["moe_layers"].size(), names.size());
    for (size_t i = 0; i < names.size(); ++i) {
      const auto& layer = result.summary["moe_layers"][i];
      EXPECT_EQ(layer["name"], names[i]);
      double load_sum = 0;
      for (const auto& v : layer["expert_load"]) load_sum += v.get<double>();
      EXPECT_NEAR(load_sum, 1.0, 1e-9);
    }
    // The training log carries every layer's statistics too, and eval of the run agrees.
    std::ifstream metrics(run.file("metrics.jsonl"));
    std::string line;
    std::getline(metrics, line);
    EXPECT_EQ(nlohmann::json::parse(line)["moe_layers"].size(), names.size());
    auto loaded = load_run(run.path());
    const auto eval = evaluate_run_split(loaded, "valid", "", 0, nullptr);
    EXPECT_NEAR(eval.loss, result.summary["valid_loss"].get<double>(), 1e-9);
  }
}

TEST(Training, TransformerInBf16FollowsFloat32WithFloat32MasterWeights) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  std::map<std::string, std::vector<double>> losses;
  for (const std::string precision : {"float32", "bf16"}) {
    TempDir run;
    auto config = tiny_transformer_config(corpus_dir);
    config.apply_override("train.steps=10");
    config.apply_override("train.precision=" + precision);
    TrainRequest request{config, run.path()};
    request.quiet = true;
    const auto result = train_model(request);
    ASSERT_TRUE(result.finished);
    EXPECT_EQ(result.summary["precision"], precision);
    losses[precision] = training_losses(run.path());
    auto loaded = load_run(run.path());
    for (const auto& p : loaded.model->parameters()) EXPECT_EQ(p.scalar_type(), torch::kFloat32);
  }
  ASSERT_EQ(losses["bf16"].size(), 10u);
  // Same seed, same batches: the bf16 run follows the float32 one closely but not bit for bit.
  EXPECT_NE(losses["bf16"], losses["float32"]);
  for (size_t i = 0; i < 10; ++i) EXPECT_NEAR(losses["bf16"][i], losses["float32"][i], 0.02) << "step " << i + 1;
}

TEST(Training, FreezeKeepsMatchingParametersAtTheirInitialValues) {
  TempDir data;
  const auto corpus_dir = make_corpus(data);
  for (const std::string pattern : {"experts", "!experts"}) {
    SCOPED_TRACE(pattern);
    TempDir run;
    auto config = tiny_transformer_config(corpus_dir);
    config.apply_override("train.steps=3");
    config.apply_override("train.freeze=[\"" + pattern + "\"]");
    TrainRequest request{config, run.path()};
    request.quiet = true;
    const auto result = train_model(request);
    ASSERT_TRUE(result.finished);
    EXPECT_FALSE(result.summary["frozen_parameters"].empty());
    // Initial weights depend on the seed alone: rebuild them and compare.
    auto trained = load_run(run.path());
    torch::manual_seed(static_cast<uint64_t>(config.get_int("train.seed")));
    auto initial = make_language_model(config, trained.vocabulary.size());
    auto initial_parameters = initial->named_parameters();
    int same = 0, changed = 0;
    for (const auto& item : trained.model->named_parameters()) {
      const bool expert = item.key().find("experts") != std::string::npos;
      const bool frozen = pattern == "experts" ? expert : !expert;
      const bool equal = torch::equal(item.value(), initial_parameters[item.key()]);
      if (frozen) {
        EXPECT_TRUE(equal) << item.key();
      }
      (equal ? same : changed) += 1;
    }
    EXPECT_GT(same, 0);
    EXPECT_GT(changed, 0);
  }
  TempDir run;
  auto config = tiny_transformer_config(corpus_dir);
  config.apply_override("train.freeze=[\"expertz\"]");
  TrainRequest request{config, run.path()};
  request.quiet = true;
  try {
    train_model(request);
    FAIL() << "a pattern that matches nothing must be refused";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("train.freeze pattern \"expertz\" matches no parameter"), std::string::npos)
        << error.what();
  }
}
