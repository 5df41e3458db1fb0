// A checkpoint file: its metadata (config, vocabulary, step) and its tensors loaded into a small
// model of fixed shape. MOELAB_FUZZ_WRITE_SEED=FILE writes a valid checkpoint of that model (a seed).
#include <cstdlib>

#include "fuzz_input.h"
#include "moelab/config/config.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/util/error.h"

namespace {

moelab::Config small_config() {
  auto config = moelab::Config::defaults();
  for (const char* a : {"model.embed=8", "model.hidden=8", "moe.experts=4", "moe.k=2", "moe.expert_hidden=8"})
    config.apply_override(a);
  return config;
}

}  // namespace

#ifndef MOELAB_FUZZ_IN_TESTS
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seed = std::getenv("MOELAB_FUZZ_WRITE_SEED")) {
    const auto config = small_config();
    auto model = moelab::build_language_model(config, 20);
    moelab::save_checkpoint(seed, *model, nullptr, {}, {7, config.to_toml(), "<eos>\n<unk>\na\n"});
  }
  return 0;
}
#endif

MOELAB_FUZZ_TARGET(checkpoint) {
  static const auto config = small_config();
  auto model = moelab::build_language_model(config, 20);  // fresh: a refused input must not leak into the next
  const auto path = moelab::fuzz::scratch_directory() + "/checkpoint.pt";
  moelab::fuzz::write_bytes(path, std::string(reinterpret_cast<const char*>(data), size));
  try {
    const auto meta = moelab::read_checkpoint_meta(path);
    try {
      moelab::Config::from_toml_string(meta.config_toml, "checkpoint config");
    } catch (const moelab::Error&) {
    }
    moelab::LstmState state;
    moelab::load_checkpoint(path, *model, nullptr, &state, /*restore_rng=*/false);
  } catch (const moelab::Error&) {
  }
  return 0;
}
