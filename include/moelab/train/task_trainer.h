// Training the tagging (model.task = "tagging") and extractive QA (model.task = "qa") models with
// the same run-directory contract as the language model: resolved config, metrics.jsonl, atomic
// checkpoints and --resume, summary.json with the task's figures (valid_token_acc,
// valid_entity_f1, test_entity_f1 / valid_em, valid_f1) next to parameters, FLOPs and routing.
#pragma once
#include "moelab/train/trainer.h"

namespace moelab {

// Batches are sentences (or question + context pairs) grouped by length and shuffled per epoch
// with train.seed; train.steps counts batches. Throws Error for bad input and a non-finite loss.
TrainResult train_task_model(const TrainRequest& request);

}  // namespace moelab
