// Word-level corpus in the WikiText/PTB convention: a directory with train.txt valid.txt test.txt,
// whitespace-separated tokens, one <eos> appended to every line (blank lines included), words
// outside the vocabulary mapped to <unk>, vocabulary built from train only.
#pragma once
#include <torch/types.h>

#include <string>

#include "moelab/data/vocabulary.h"

namespace moelab {

struct TextCorpus {
  Vocabulary vocabulary;
  torch::Tensor train;  // [tokens] int64
  torch::Tensor valid;  // [tokens] int64
  torch::Tensor test;   // [tokens] int64
  std::string directory;
};

// Throws moelab::Error (one line) for a missing directory, a missing/unreadable/empty split file.
TextCorpus load_text_corpus(const std::string& directory, const VocabularyOptions& options);

// Token ids of one split file with a given vocabulary (for `eval --data DIR`).
torch::Tensor load_split(const std::string& path, const Vocabulary& vocabulary);

// Splits a line into tokens on whitespace.
std::vector<std::string> split_whitespace(const std::string& line);

}  // namespace moelab
