// Checkpoints: everything needed to continue a run exactly where it stopped - model, optimizer,
// step, random generator state, the LSTM state carried between windows, vocabulary and config.
// Written to a temp file, synced and renamed, so a killed process never leaves half a checkpoint;
// the one before stays as `checkpoint.pt.prev`, the fallback when the newest will not read.
#pragma once
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "moelab/comm/communicator.h"
#include "moelab/models/lstm_language_model.h"

namespace moelab {

struct CheckpointMeta {
  int64_t step = 0;
  std::string config_toml;
  std::string vocabulary_text;
};

// How a distributed run's tensors split over its ranks. Under expert parallelism every rank writes
// its experts (parameters and optimizer state) to a shard file of its own, "<checkpoint>.experts-
// <first>-<count>-<digest>", and rank 0 writes the main file with everything else: its manifest
// entry (JSON) lists the shards, so no rank ever holds more than its own experts. A process reading
// the checkpoint reads only the shards that hold its experts: a run saved by W ranks resumes on any
// W' that divides E (and the batch), and `moelab eval` loads it in one process. The LSTM state is
// stored whole, every batch column.
struct CheckpointShards {
  std::shared_ptr<Communicator> communicator;
  std::string parallel = "data";                 // moe.parallel of the run
  std::vector<torch::Tensor> expert_parameters;  // stacked [local_experts, ...] (expert parallelism)
  int64_t num_experts = 0, first_expert = 0, local_experts = 0;
  int64_t num_columns = 0, first_column = 0, local_columns = 0;  // LSTM state, dimension 1
};

// With `shards` this is a collective: every rank calls it, rank 0 writes the file.
void save_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     const LstmState& state, const CheckpointMeta& meta, const CheckpointShards* shards = nullptr);

// Reads only the metadata (config, vocabulary, step); throws Error for a missing, unreadable or
// truncated file.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// The checkpoint saved before the newest one at `path` ("path.prev").
std::string previous_checkpoint_path(const std::string& path);
// Whether `path` or its previous checkpoint exists.
bool checkpoint_exists(const std::string& path);

struct FoundCheckpoint {
  std::string path;  // the file to load: `path`, or its previous checkpoint
  CheckpointMeta meta;
};
// The newest readable checkpoint: `path`, else (with a one-line warning on stderr) the previous one
// when `path` is missing, truncated or corrupt. nullopt when neither exists; Error when neither reads.
std::optional<FoundCheckpoint> find_checkpoint(const std::string& path);

// Restores model parameters (and optimizer, state and the global RNG when given).
// With `shards`, every rank reads the whole file and keeps its own experts and batch columns.
void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     LstmState* state, bool restore_rng, const CheckpointShards* shards = nullptr);

}  // namespace moelab
