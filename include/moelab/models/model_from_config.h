// Builds models from a resolved Config, so the CLI, the tests and later tools agree on what each
// key means.
#pragma once
#include "moelab/config/config.h"
#include "moelab/models/lstm_language_model.h"

namespace moelab {

LstmLanguageModelOptions language_model_options(const Config& config, int64_t vocab_size);
LstmLanguageModel build_language_model(const Config& config, int64_t vocab_size);

}  // namespace moelab
