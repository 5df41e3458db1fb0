// Config schema, TOML round trip, overrides; learning-rate schedule; BLAS kernel choice.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "moelab/config/assignment.h"
#include "moelab/config/config.h"
#include "moelab/layers/causal_self_attention.h"
#include "moelab/models/model_from_config.h"
#include "moelab/report/sweep.h"
#include "moelab/train/lr_schedule.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"
#include "error_message.h"
#include "test_util.h"

using moelab::testing::contains;
using moelab::testing::error_message;
using moelab::testing::source_dir;

using namespace moelab;

TEST(Config, DefaultsValidateAndRoundTripThroughToml) {
  auto config = Config::defaults();
  EXPECT_NO_THROW(config.validate());
  config.apply_override("moe.k=2");
  config.apply_override("train.lr=0.0005");
  config.apply_override("model.adaptive_cutoffs=[100, 500]");
  config.apply_override("data.corpus=/some/dir");
  config.apply_override("model.tie_weights=true");
  const auto again = Config::from_toml_string(config.to_toml(), "roundtrip");
  EXPECT_EQ(again.to_toml(), config.to_toml());
  EXPECT_EQ(again.get_int("moe.k"), 2);
  EXPECT_DOUBLE_EQ(again.get_float("train.lr"), 0.0005);
  EXPECT_EQ(again.get_int_list("model.adaptive_cutoffs"), (std::vector<int64_t>{100, 500}));
  EXPECT_EQ(again.get_string("data.corpus"), "/some/dir");
  EXPECT_TRUE(again.get_bool("model.tie_weights"));
  EXPECT_EQ(again.first_experiment_difference(config), "");
}

TEST(Config, AssignmentsSplitAtTheFirstEqualsWithBlanksTrimmed) {
  const auto spaced = split_assignment(" moe.k\t= 2 \n");
  EXPECT_EQ(spaced.key, "moe.k");
  EXPECT_EQ(spaced.value, "2");
  EXPECT_TRUE(spaced.has_equals);
  const auto path = split_assignment("data.corpus=a=b");  // a value may hold '='
  EXPECT_EQ(path.key, "data.corpus");
  EXPECT_EQ(path.value, "a=b");
  EXPECT_FALSE(split_assignment("moe.k").has_equals);
  auto config = Config::defaults();
  config.apply_override(" moe.k = 3 ");
  EXPECT_EQ(config.get_int("moe.k"), 3);
}

TEST(Config, NestedSectionsAndIntegersForFloats) {
  const auto config = Config::from_toml_string("[moe]\nexperts = 8\n[moe.balance]\nload = 1\n", "t.toml");
  EXPECT_EQ(config.get_int("moe.experts"), 8);
  EXPECT_DOUBLE_EQ(config.get_float("moe.balance.load"), 1.0);
}

TEST(Config, ErrorsNameTheKey) {
  EXPECT_TRUE(contains(error_message([] { Config::from_toml_string("[moe]\nexpertz = 3\n", "a.toml"); }),
                       "unknown config key 'moe.expertz' in a.toml"));
  EXPECT_TRUE(contains(error_message([] { Config::from_toml_string("[moe]\nk = \"two\"\n", "a.toml"); }),
                       "'moe.k' in a.toml must be an integer"));
  EXPECT_TRUE(contains(error_message([] { Config::defaults().apply_override("moe.k=abc"); }), "'abc' is not an integer"));
  EXPECT_TRUE(contains(error_message([] { Config::from_toml_string("[moe\n", "bad.toml"); }), "cannot parse bad.toml"));
  auto k_too_big = Config::defaults();
  k_too_big.apply_override("moe.k=17");
  EXPECT_TRUE(contains(error_message([&] { k_too_big.validate(); }), "moe.k = 17 exceeds moe.experts = 16"));
  auto zero_bptt = Config::defaults();
  zero_bptt.apply_override("train.bptt=0");
  EXPECT_TRUE(contains(error_message([&] { zero_bptt.validate(); }), "train.bptt must be > 0"));
  auto router_norm = Config::defaults();
  router_norm.apply_override("moe.router_norm=layer");
  EXPECT_TRUE(contains(error_message([&] { router_norm.validate(); }), "moe.router_norm"));
}

TEST(Config, EveryFloatKeyMustBeFinite) {
  // inf used to pass ">= 0" tests and end far away ("grouped_matmul: negative row count" for an
  // infinite capacity factor); nan, in TOML or through --set, is refused the same way.
  for (const auto& key : Config::schema()) {
    if (!std::holds_alternative<double>(key.default_value)) continue;
    for (const char* bad : {"inf", "-inf", "nan"}) {
      auto config = Config::defaults();
      config.apply_override(key.name + "=" + bad);
      std::string message = "no error";
      try {
        config.validate();
      } catch (const Error& e) {
        message = e.what();
      }
      EXPECT_NE(message.find(key.name + " must be"), std::string::npos) << key.name << "=" << bad << ": " << message;
    }
  }
  auto from_file = Config::from_toml_string("[moe]\ncapacity_factor = inf\n", "inf.toml");
  EXPECT_THROW(from_file.validate(), Error);
}

TEST(Config, StringsWithControlCharactersRoundTrip) {
  // The resolved config.toml is what a resume reads: any string a user passed must read back.
  auto config = Config::defaults();
  const std::string awkward = std::string("a\"b\\c\nd\te\rf") + '\x01' + "g\x7f h \xc3\xa9";
  config.set("data.corpus", ConfigValue(awkward));
  config.set("train.freeze", ConfigValue(std::vector<std::string>{"x\ny", "\x1b[0m"}));
  const auto again = Config::from_toml_string(config.to_toml(), "roundtrip");
  EXPECT_EQ(again.get_string("data.corpus"), awkward);
  EXPECT_EQ(again.get_string_list("train.freeze"), (std::vector<std::string>{"x\ny", "\x1b[0m"}));
  // Bytes that are not UTF-8 cannot be written as TOML: refused when set, in one line.
  for (const char* bad : {"\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"}) {
    try {
      Config::defaults().apply_override(std::string("data.corpus=dir") + bad);
      ADD_FAILURE() << "accepted a non-UTF-8 string";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("data.corpus' must be UTF-8 text"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(Config::defaults().apply_override("data.corpus=\xf0\x9f\x98\x80\xe2\x82\xac"));
}

TEST(Config, ExperimentDifferenceIgnoresOperationalKeys) {
  auto a = Config::defaults();
  auto b = Config::defaults();
  b.apply_override("train.threads=1");
  b.apply_override("train.log_every=3");
  EXPECT_EQ(a.first_experiment_difference(b), "");
  b.apply_override("moe.experts=8");
  EXPECT_NE(a.first_experiment_difference(b).find("moe.experts"), std::string::npos);
}

TEST(Config, TransformerAndOptimizerKeysRejectBadValuesInOneLine) {
  // Each new key with a bad value, and the words its message must hold.
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"model.arch=gru"}, "model.arch must be one of lstm, transformer, got 'gru'"},
      {{"model.arch=transformer", "model.layers=0"}, "model.layers must be > 0"},
      {{"model.arch=transformer", "model.heads=0"}, "model.heads must be > 0"},
      {{"model.arch=transformer", "model.heads=3"}, "model.heads = 3 must divide model.hidden = 256"},
      {{"model.arch=transformer", "model.context=0"}, "model.context must be > 0"},
      {{"model.arch=transformer", "model.positions=alibi"}, "model.positions must be one of learned, rope"},
      {{"model.arch=transformer", "model.positions=rope", "model.hidden=24", "model.heads=8"},
       "needs an even head width; model.hidden / model.heads = 3"},
      {{"model.arch=transformer", "model.norm=batchnorm"}, "model.norm must be one of layernorm, rmsnorm"},
      {{"model.arch=transformer", "model.ffn_hidden=-1"}, "model.ffn_hidden must be >= 0"},
      {{"model.arch=transformer", "moe.every=0"}, "moe.every must be > 0"},
      {{"model.arch=transformer", "moe.every=5"}, "moe.every = 5 exceeds model.layers = 4"},
      {{"model.arch=transformer", "model.task=tagging", "data.train=a", "data.valid=b"},
       "model.arch = \"transformer\" is a language model"},
      {{"model.attention=flash"}, "model.attention must be one of auto, fused, plain"},
      {{"train.optimizer=lamb"}, "train.optimizer must be one of adam, adamw, sgd, adagrad, factored"},
      {{"train.beta2=1.0"}, "train.beta2 must be in (0, 1)"},
      {{"train.decay=step"}, "train.decay must be one of cosine, linear, inverse_sqrt, none"},
      {{"train.precision=fp8"}, "train.precision must be one of float32, bf16"},
      {{"train.freeze=[\"!\"]"}, "train.freeze patterns must name something"},
  };
  for (const auto& [overrides, expected] : cases) {
    auto config = Config::defaults();
    for (const auto& assignment : overrides) config.apply_override(assignment);
    std::string message = "no error";
    try {
      config.validate();
    } catch (const Error& e) {
      message = e.what();
    }
    EXPECT_NE(message.find(expected), std::string::npos) << overrides.back() << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
  // A list key takes a TOML array of strings, and --set takes [a, "b"].
  EXPECT_THROW(Config::from_toml_string("[train]\nfreeze = \"experts\"\n", "f.toml"), Error);
  auto listed = Config::defaults();
  listed.apply_override("train.freeze=[experts, \"router\"]");
  EXPECT_EQ(listed.get_string_list("train.freeze"), (std::vector<std::string>{"experts", "router"}));
  EXPECT_EQ(Config::from_toml_string(listed.to_toml(), "roundtrip").get_string_list("train.freeze"),
            listed.get_string_list("train.freeze"));
  if (!fused_attention_available()) {
    auto config = Config::defaults();
    config.apply_override("model.attention=fused");
    EXPECT_THROW(config.validate(), Error);
  }
}

TEST(LrSchedule, InverseSquareRootAfterWarmup) {
  LrSchedule s{1.0, 100, 1000, "inverse_sqrt", 0.1};
  EXPECT_DOUBLE_EQ(s.at(50), 0.5);
  EXPECT_DOUBLE_EQ(s.at(100), 1.0);
  EXPECT_NEAR(s.at(400), 0.5, 1e-12);
  EXPECT_NEAR(s.at(10000), 0.1, 1e-12);  // past total_steps it keeps falling: no floor
}

TEST(LrSchedule, WarmupThenCosineToFloor) {
  LrSchedule s{1.0, 10, 110, "cosine", 0.1};
  EXPECT_DOUBLE_EQ(s.at(1), 0.1);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);  // half way: 0.1 + 0.9 * 0.5
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  LrSchedule linear{2.0, 0, 100, "linear", 0.0};
  EXPECT_NEAR(linear.at(50), 1.0, 1e-12);
  LrSchedule constant{3.0, 0, 100, "none", 0.0};
  EXPECT_DOUBLE_EQ(constant.at(77), 3.0);
}

TEST(BlasEnv, ForcesWiderKernelsOnlyWhenDetectionFellShort) {
  CpuFeatures avx512{true, true, true};
  CpuFeatures avx2{true, true, false};
  CpuFeatures old{false, false, false};
  EXPECT_EQ(better_openblas_core(avx512, "Prescott"), std::optional<std::string>("SkylakeX"));
  EXPECT_EQ(better_openblas_core(avx512, "Haswell"), std::optional<std::string>("SkylakeX"));
  EXPECT_EQ(better_openblas_core(avx2, "Prescott"), std::optional<std::string>("Haswell"));
  EXPECT_EQ(better_openblas_core(avx512, "SkylakeX"), std::nullopt);
  EXPECT_EQ(better_openblas_core(avx2, "Zen"), std::nullopt);
  EXPECT_EQ(better_openblas_core(avx2, "haswell"), std::nullopt);
  EXPECT_EQ(better_openblas_core(old, "Prescott"), std::nullopt);
}

TEST(BlasEnv, CpuFeaturesAgreeWithTheKernelsFlags) {
  std::ifstream in("/proc/cpuinfo");
  std::string line, flags;
  while (std::getline(in, line))
    if (line.rfind("flags", 0) == 0) {
      flags = line + " ";
      break;
    }
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  const auto has = [&](const std::string& flag) { return flags.find(" " + flag + " ") != std::string::npos; };
  const auto cpu = detect_cpu_features();
  EXPECT_EQ(cpu.avx2, has("avx2"));
  EXPECT_EQ(cpu.fma, has("fma"));
  EXPECT_EQ(cpu.avx512_bf16, has("avx512_bf16")) << flags;
}

TEST(BlasEnv, CpuDescriptionNamesTheModelAndItsWidestVectors) {
  const auto description = cpu_description();
  EXPECT_EQ(description.rfind(cpu_model_name() + " (", 0), 0u) << description;
  const auto cpu = detect_cpu_features();
  const std::string vectors = cpu.avx512_bf16 ? "(AVX-512, avx512_bf16)" : cpu.avx512 ? "(AVX-512)" : cpu.avx2 ? "(AVX2)" : "(no AVX2)";
  EXPECT_EQ(description.substr(description.size() - vectors.size()), vectors) << description;
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      EXPECT_NE(line.find(cpu_model_name()), std::string::npos) << line;
      break;
    }
}

TEST(Config, ShippedConfigsParseAndValidate) {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(source_dir() + "/configs")) {
    if (entry.path().extension() != ".toml") continue;
    const auto config = Config::from_toml_file(entry.path().string());
    EXPECT_NO_THROW(config.validate()) << entry.path();
    // Building the task's model also checks what only the parts know (router sizes, loss
    // compatibility, Soft MoE only in encoders).
    const auto task = config.get_string("model.task");
    if (task == "translation")
      EXPECT_NO_THROW(make_translation_model(config, 1000, 1000)) << entry.path();
    else if (task == "tagging" || task == "qa")
      EXPECT_NO_THROW(BiLstmMoEEncoder(encoder_options(config, 10000))) << entry.path();
    else
      EXPECT_NO_THROW(make_language_model(config, 10000)) << entry.path();
    ++count;
  }
  EXPECT_GE(count, 14);
}

TEST(Config, ShippedStudiesExpandIntoValidRuns) {
  int studies = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(source_dir() + "/configs/studies")) {
    if (entry.path().extension() != ".toml" || entry.path().stem().string().rfind("base", 0) == 0) continue;
    SCOPED_TRACE(entry.path().string());
    const auto spec = parse_study_file(entry.path().string());
    // expand_sweep validates every run's config; a variant that names a missing key fails here.
    std::vector<SweepRun> runs;
    ASSERT_NO_THROW(runs = expand_sweep(spec));
    EXPECT_EQ(static_cast<int64_t>(runs.size()), static_cast<int64_t>(spec.variants.size()) * spec.seeds);
    ++studies;
  }
  EXPECT_GE(studies, 8);
}

// The process set-up shrinks oneDNN's primitive cache (bf16 expert products filled it with shapes seen
// once: +0.65 GB in 60 steps); where the cache is reachable (Debian's shared oneDNN), that is the
// capacity in effect.
TEST(BlasEnv, OneDnnPrimitiveCacheHoldsFewShapes) {
  if (std::getenv("DNNL_PRIMITIVE_CACHE_CAPACITY")) GTEST_SKIP() << "the user set DNNL_PRIMITIVE_CACHE_CAPACITY";
  const char* exported = std::getenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY");
  ASSERT_NE(exported, nullptr) << "tune_process_environment sets it";
  using GetCapacity = int (*)(int*);
  const auto get = reinterpret_cast<GetCapacity>(dlsym(RTLD_DEFAULT, "dnnl_get_primitive_cache_capacity"));
  if (!get) GTEST_SKIP() << "oneDNN's primitive cache is not reachable in this LibTorch";
  int capacity = -1;
  ASSERT_EQ(get(&capacity), 0);
  EXPECT_EQ(capacity, std::atoi(exported));
}
