// A trained translation run, loaded for `moelab translate`: its config, the SentencePiece models the
// run directory keeps, and the model with the weights of its best (or last) checkpoint.
#pragma once
#include <string>

#include "moelab/config/config.h"
#include "moelab/data/subword_model.h"
#include "moelab/models/beam_search.h"
#include "moelab/models/translation_model.h"

namespace moelab {

struct LoadedTranslationRun {
  Config config;
  SubwordModel source, target;
  TranslationModelPtr model;  // in eval mode
  std::string checkpoint;     // the file the weights came from
  int64_t step = 0;
};

// checkpoint: "best" (best.pt, the best validation BLEU; checkpoint.pt when there is none) or "last"
// (checkpoint.pt). Throws Error for a directory without a translation run.
LoadedTranslationRun load_translation_run(const std::string& directory, const std::string& device_name,
                                          const std::string& checkpoint = "best");

// decode.* of the run's config, with the special ids of its SentencePiece models.
SearchOptions search_options(const Config& config);

// Plain-text sentences -> detokenised translations, in order.
std::vector<std::string> translate_text(LoadedTranslationRun& run, const std::vector<std::string>& sentences,
                                        const SearchOptions& options);

}  // namespace moelab
