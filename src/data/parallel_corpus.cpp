#include "moelab/data/parallel_corpus.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "moelab/util/error.h"

namespace fs = std::filesystem;

namespace moelab {

namespace {

// The languages `directory` has a train.{lang} file for, sorted, for messages: "de, en".
std::string train_languages(const std::string& directory) {
  std::vector<std::string> languages;
  for (const auto& entry : fs::directory_iterator(directory)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("train.", 0) == 0 && name.size() > 6) languages.push_back(name.substr(6));
  }
  std::sort(languages.begin(), languages.end());
  std::string list;
  for (const auto& language : languages) list += (list.empty() ? "" : ", ") + language;
  return list.empty() ? "none" : list;
}

[[noreturn]] void fail_missing(const std::string& directory, const std::string& file) {
  fail("no {} in {} (languages there: {})", file, directory, train_languages(directory));
}

std::string path_in(const std::string& directory, const std::string& file) {
  return (fs::path(directory) / file).string();
}

bool is_file(const std::string& path) { return fs::is_regular_file(path); }

// The split's file name for `language`: the first of `stems` that exists.
std::string split_file(const std::string& directory, const std::vector<std::string>& stems,
                       const std::string& language) {
  for (const auto& stem : stems)
    if (is_file(path_in(directory, stem + "." + language))) return path_in(directory, stem + "." + language);
  std::string names;
  for (const auto& stem : stems) names += (names.empty() ? "" : " or ") + stem + "." + language;
  fail_missing(directory, names);
}

// The first test* name (by byte order) with a file in both languages; "" when there is no test*
// file in the source language at all (a corpus without a test set).
std::string first_test_name(const std::string& directory, const std::string& source_lang,
                            const std::string& target_lang) {
  const std::string suffix = "." + source_lang;
  std::vector<std::string> stems;
  bool any_source = false;
  for (const auto& entry : fs::directory_iterator(directory)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("test", 0) != 0 || name.size() <= suffix.size() ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string stem = name.substr(0, name.size() - suffix.size());
    if (!is_file(path_in(directory, name))) continue;
    any_source = true;
    if (is_file(path_in(directory, stem + "." + target_lang))) stems.push_back(stem);
  }
  if (!any_source) return "";
  // Half a test set is more likely a mistake than a corpus without one.
  if (stems.empty()) fail_missing(directory, "test*." + source_lang + " with a matching test*." + target_lang);
  return *std::min_element(stems.begin(), stems.end());
}

void check_language(const std::string& language) {
  if (language.empty() || language.find('/') != std::string::npos || language.find('.') != std::string::npos)
    fail("'{}' is not a language code (expected a file extension such as de or en)", language);
}

// The lines of one file, a trailing '\r' removed; empty or whitespace-only lines are errors.
std::vector<std::string> read_sentences(const std::string& path) {
  if (!fs::exists(path)) fail("{} does not exist", path);
  if (fs::is_directory(path)) fail("{} is a directory, not a text file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::vector<std::string> sentences;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t\v\f\r") == std::string::npos)
      fail("{}:{}: empty sentence", path, sentences.size() + 1);
    sentences.push_back(std::move(line));
  }
  if (in.bad()) fail("cannot read {}", path);
  if (sentences.empty()) fail("{} is empty", path);
  return sentences;
}

}  // namespace

ParallelCorpusFiles find_parallel_corpus(const std::string& directory, const std::string& source_lang,
                                         const std::string& target_lang, const std::string& test_name) {
  check_language(source_lang);
  check_language(target_lang);
  if (source_lang == target_lang)
    fail("source and target language are both '{}'; a translation needs two languages", source_lang);
  if (!fs::is_directory(directory)) fail("parallel corpus directory {} does not exist", directory);

  ParallelCorpusFiles files;
  files.train_source = split_file(directory, {"train"}, source_lang);
  files.train_target = split_file(directory, {"train"}, target_lang);
  files.valid_source = split_file(directory, {"val", "valid"}, source_lang);
  files.valid_target = split_file(directory, {"val", "valid"}, target_lang);
  const std::string test = test_name.empty() ? first_test_name(directory, source_lang, target_lang) : test_name;
  if (test.empty()) return files;
  files.test_source = split_file(directory, {test}, source_lang);
  files.test_target = split_file(directory, {test}, target_lang);
  return files;
}

ParallelText read_parallel_text(const std::string& source_path, const std::string& target_path) {
  ParallelText text;
  text.source = read_sentences(source_path);
  text.target = read_sentences(target_path);
  if (text.source.size() != text.target.size()) {
    // The first line without a partner is where a file was cut short or a sentence split in two.
    const bool source_longer = text.source.size() > text.target.size();
    const auto& longer = source_longer ? source_path : target_path;
    const auto& shorter = source_longer ? target_path : source_path;
    const size_t lines = std::min(text.source.size(), text.target.size());
    fail("{}:{}: no line {} in {} ({} has {} sentences, {} has {}; line i of one must translate line i of the "
         "other)",
         longer, lines + 1, lines + 1, shorter, source_path, text.source.size(), target_path, text.target.size());
  }
  text.source_path = source_path;
  text.target_path = target_path;
  return text;
}

}  // namespace moelab
