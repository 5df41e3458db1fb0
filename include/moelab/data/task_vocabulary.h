// The word vocabulary of a tagging or QA run, and its embedding table when GloVe vectors are given.
// Ids: 0 <pad>, 1 <unk>, the task's specials, then words by descending training frequency (ties by string). Kept: every
// training word seen data.min_count times or found in GloVe, and every validation / test word found
// in GloVe (pretrained vectors make them useful without leaking labels).
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "moelab/config/config.h"
#include "moelab/data/vocabulary.h"

namespace moelab {

inline constexpr const char* kPadToken = "<pad>";

struct TaskVocabularyOptions {
  int64_t min_count = 1;
  std::string embeddings_path;  // GloVe text file; "" = learned embeddings
  int64_t embed_dim = 0;        // must equal the file's dimension
  std::vector<std::string> specials;  // task markers placed after <pad> and <unk> (e.g. <sep>)
};

struct TaskVocabulary {
  Vocabulary words;
  torch::Tensor embeddings;  // [size, embed_dim] from GloVe; undefined without a file
  int64_t embeddings_found = 0;  // vocabulary words that had a GloVe vector
  int64_t glove_vectors = 0;     // vectors in the file
};

// train_counts and other_words hold words as the model looks them up (see lookup_form).
TaskVocabulary build_task_vocabulary(const std::unordered_map<std::string, int64_t>& train_counts,
                                     const std::unordered_set<std::string>& other_words,
                                     const TaskVocabularyOptions& options);

// The vocabulary of a run: the saved one when resuming (the checkpoint then holds the embedding
// table, so no GloVe file is read), else built with data.min_count, data.embeddings, model.embed.
TaskVocabulary task_vocabulary_for_run(const Config& config, const std::optional<std::string>& saved_vocabulary,
                                       const std::unordered_map<std::string, int64_t>& train_counts,
                                       const std::unordered_set<std::string>& other_words,
                                       const std::vector<std::string>& specials);

// The form a word is looked up in: lower-cased (ASCII) when `lowercase`.
std::string lookup_form(const std::string& word, bool lowercase);

}  // namespace moelab
