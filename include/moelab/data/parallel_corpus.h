// Sentence-aligned parallel text in the Multi30k convention (Elliott et al. 2016): a directory with
// one file per split and language, named `split.lang` (train.de, train.en, val.de, val.en,
// test_2016_flickr.de, ...), one sentence per line, line i of the source file translating line i
// of the target file.
#pragma once
#include <string>
#include <vector>

namespace moelab {

struct ParallelCorpusFiles {
  std::string train_source, train_target;
  std::string valid_source, valid_target;
  std::string test_source, test_target;
};

// The six files of one translation direction in `directory`: train.{lang}; val.{lang}, or
// valid.{lang} where there is no val.{lang}; and for the test split `test_name.{lang}` when
// test_name is given, else the lexicographically first `test*` name that exists in both languages
// (Multi30k's test_2016_flickr before test_2017_flickr); no test files (empty names) when test_name
// is not given and there is no test* file in the source language. Throws moelab::Error (one line)
// for a missing directory or file (a test* source file without its target counts), naming it and the
// languages the directory has train files for, and for source_lang == target_lang.
ParallelCorpusFiles find_parallel_corpus(const std::string& directory, const std::string& source_lang,
                                         const std::string& target_lang, const std::string& test_name = "");

struct ParallelText {
  std::vector<std::string> source, target;  // source[i] translates to target[i]
  std::string source_path, target_path;
};

// Both files, one sentence a line, a trailing '\r' removed and the bytes otherwise kept as they
// are (no UTF-8 check: the subword model sees exactly what is in the file). Throws moelab::Error
// for an unreadable or empty file, an empty or whitespace-only line ("FILE:LINE: empty sentence"),
// and files of different line counts (naming both files and both counts).
ParallelText read_parallel_text(const std::string& source_path, const std::string& target_path);

}  // namespace moelab
