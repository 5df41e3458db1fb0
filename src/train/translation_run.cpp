#include "moelab/train/translation_run.h"

#include "moelab/device/device.h"
#include "moelab/models/model_from_config.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/translation_decoding.h"
#include "moelab/util/error.h"

namespace moelab {

LoadedTranslationRun load_translation_run(const std::string& directory, const std::string& device_name,
                                          const std::string& checkpoint) {
  const auto device = parse_device(device_name, "--device");
  const auto found = find_run_checkpoint(directory, checkpoint);
  const std::string checkpoint_path = found.path;
  const auto& meta = found.meta;
  auto config = Config::from_toml_string(meta.config_toml, checkpoint_path + " (config)");
  if (config.get_string("model.task") != "translation")
    fail("{} is a {} run, not a translation run", directory, config.get_string("model.task"));
  LoadedTranslationRun run{config, SubwordModel::load(directory + "/spm_source.model"),
                           SubwordModel::load(directory + "/spm_target.model"), nullptr, checkpoint_path, meta.step};
  run.model = make_translation_model(run.config, run.source.size(), run.target.size());
  run.model->to(device);
  load_checkpoint(run.checkpoint, *run.model, /*optimizer=*/nullptr, /*state=*/nullptr, /*restore_rng=*/false);
  run.model->eval();
  return run;
}

SearchOptions search_options(const Config& config) {
  SearchOptions options;
  options.beam = config.get_int("decode.beam");
  options.alpha = config.get_float("decode.alpha");
  options.max_ratio = config.get_float("decode.max_ratio");
  options.pad = SubwordModel::kPadId;
  options.bos = SubwordModel::kBosId;
  options.eos = SubwordModel::kEosId;
  return options;
}

std::vector<std::string> translate_text(LoadedTranslationRun& run, const std::vector<std::string>& sentences,
                                        const SearchOptions& options) {
  std::vector<std::vector<int64_t>> sources;
  for (const auto& sentence : sentences) {
    auto ids = run.source.encode(sentence);
    ids.push_back(SubwordModel::kEosId);
    sources.push_back(std::move(ids));
  }
  const auto device = run.model->parameters().front().device();
  const auto hypotheses = translate_ids(*run.model, sources, options, run.config.get_int("train.batch_tokens"), device);
  std::vector<std::string> out;
  for (const auto& hypothesis : hypotheses) out.push_back(run.target.decode(hypothesis.tokens));
  return out;
}

}  // namespace moelab
