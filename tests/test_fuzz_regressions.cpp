// Every fuzz target (fuzz/fuzz_*.cpp) replayed on its seeds (fuzz/seeds/TARGET/) and on every input a
// fuzzing run has crashed on (tests/fixtures/fuzz/TARGET/): each must be read or refused with a
// moelab::Error, never crash, abort or throw anything else. scripts/fuzz.sh runs the targets under
// libFuzzer with ASan + UBSan; this keeps what they found fixed in the ordinary build.
#define MOELAB_FUZZ_IN_TESTS
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>

#include "../fuzz/fuzz_checkpoint.cpp"
#include "../fuzz/fuzz_config.cpp"
#include "../fuzz/fuzz_conll.cpp"
#include "../fuzz/fuzz_glove.cpp"
#include "../fuzz/fuzz_parallel_text.cpp"
#include "../fuzz/fuzz_squad.cpp"
#include "../fuzz/fuzz_study.cpp"
#include "../fuzz/fuzz_text_corpus.cpp"
#include "test_util.h"

using moelab::testing::source_dir;

namespace {

namespace fs = std::filesystem;

const std::map<std::string, std::function<int(const uint8_t*, size_t)>>& fuzz_targets() {
  static const std::map<std::string, std::function<int(const uint8_t*, size_t)>> targets = {
      {"checkpoint", moelab_fuzz_checkpoint}, {"config", moelab_fuzz_config},
      {"conll", moelab_fuzz_conll},           {"glove", moelab_fuzz_glove},
      {"parallel_text", moelab_fuzz_parallel_text}, {"squad", moelab_fuzz_squad},
      {"study", moelab_fuzz_study},           {"text_corpus", moelab_fuzz_text_corpus}};
  return targets;
}

}  // namespace

TEST(FuzzRegressions, EveryTargetReadsOrRefusesItsSeedsAndPastCrashes) {
  const fs::path source = source_dir();
  ASSERT_EQ(fuzz_targets().size(), 8u);
  for (const auto& entry : fs::directory_iterator(source / "fuzz"))  // no target left out of this test
    if (entry.path().extension() == ".cpp") {
      EXPECT_TRUE(fuzz_targets().count(entry.path().stem().string().substr(5))) << entry.path();
    }
  for (const auto& [name, target] : fuzz_targets()) {
    int inputs = 0;
    for (const auto& folder : {source / "fuzz/seeds" / name, source / "tests/fixtures/fuzz" / name}) {
      if (!fs::is_directory(folder)) continue;
      for (const auto& file : fs::directory_iterator(folder)) {
        SCOPED_TRACE(file.path().string());
        const auto bytes = moelab::testing::read_file(file.path().string());
        EXPECT_EQ(target(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
        ++inputs;
      }
    }
    // Edge inputs every reader must survive.
    for (const std::string& edge : {std::string(), std::string(1, '\0'), std::string("\xff\xfe\n\n\0\0", 6)})
      EXPECT_EQ(target(reinterpret_cast<const uint8_t*>(edge.data()), edge.size()), 0) << name;
    EXPECT_GE(inputs, name == "checkpoint" ? 0 : 1) << name << " has no seed";
  }
  // The checkpoint target's seed is written, not stored: a valid checkpoint of its model, whole,
  // cut short at several points, and with bytes overwritten in the middle.
  moelab::testing::TempDir dir;
  {
    const auto config = small_config();
    auto model = moelab::build_language_model(config, 20);
    moelab::save_checkpoint(dir.file("seed.pt"), *model, nullptr, {}, {7, config.to_toml(), "<eos>\n<unk>\na\n"});
  }
  const auto valid = moelab::testing::read_file(dir.file("seed.pt"));
  ASSERT_GT(valid.size(), 1000u);
  std::vector<std::string> variants = {valid, valid.substr(0, valid.size() / 2), valid.substr(0, 64)};
  auto spoilt = valid;
  for (size_t i = valid.size() / 3; i < valid.size() / 3 + 200; ++i) spoilt[i] = static_cast<char>(i * 31);
  variants.push_back(spoilt);
  for (const auto& bytes : variants)
    EXPECT_EQ(moelab_fuzz_checkpoint(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
  // The targets swallow refusals, so the readers' acceptance of good input is checked here: a
  // reader that refused everything would otherwise pass.
  auto model = moelab::build_language_model(small_config(), 20);
  EXPECT_NO_THROW(moelab::load_checkpoint(dir.file("seed.pt"), *model, nullptr, nullptr, false));
  const auto config_seed = moelab::testing::read_file((source / "fuzz/seeds/config/small.txt").string());
  EXPECT_NO_THROW(moelab::Config::from_toml_string(config_seed.substr(0, config_seed.find('\0')), "seed").validate());
  EXPECT_NO_THROW(moelab::read_glove_file((source / "fuzz/seeds/glove/small.txt").string(), {"the"}));
  EXPECT_NO_THROW(moelab::read_conll_file((source / "fuzz/seeds/conll/small.txt").string()));
  EXPECT_NO_THROW(moelab::parse_squad_json(moelab::testing::read_file((source / "fuzz/seeds/squad/small.json").string()),
                                           "seed", moelab::SquadOptions{}));
  EXPECT_NO_THROW(moelab::expand_sweep(moelab::parse_study_file((source / "fuzz/seeds/study/small.toml").string())));
}
