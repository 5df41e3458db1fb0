// Checkpoints: everything needed to continue a run exactly where it stopped - model, optimizer,
// step, random generator state, the LSTM state carried between windows, vocabulary and config.
// Written to a temp file and renamed, so a killed process never leaves half a checkpoint.
#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <string>

#include "moelab/models/lstm_language_model.h"

namespace moelab {

struct CheckpointMeta {
  int64_t step = 0;
  std::string config_toml;
  std::string vocabulary_text;
};

void save_checkpoint(const std::string& path, const torch::nn::Module& model, const torch::optim::Optimizer* optimizer,
                     const LstmState& state, const CheckpointMeta& meta);

// Reads only the metadata (config, vocabulary, step); throws Error for a missing, unreadable or
// truncated file.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// Restores model parameters (and optimizer, state and the global RNG when given).
void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     LstmState* state, bool restore_rng);

}  // namespace moelab
