#include "moelab/data/text_corpus.h"

#include <torch/torch.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "moelab/util/error.h"

namespace moelab {
namespace {

namespace fs = std::filesystem;

// ASCII whitespace, as awk and Python's str.split() see it for these corpora.
inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// The whole file in one string; one-line errors for a missing, non-regular or unreadable file.
std::string read_corpus_file(const std::string& path) {
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) fail("corpus file {} is missing", path);
  if (!fs::is_regular_file(status)) fail("corpus file {} is not a regular file", path);
  FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) fail("cannot read corpus file {}: {}", path, std::strerror(errno));
  std::string text;
  const auto size = fs::file_size(path, ec);
  if (!ec) text.reserve(static_cast<size_t>(size));
  char chunk[1 << 16];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof chunk, file)) > 0) text.append(chunk, n);
  const bool failed = std::ferror(file) != 0;
  const int saved_errno = errno;
  std::fclose(file);
  if (failed) fail("cannot read corpus file {}: {}", path, std::strerror(saved_errno));
  return text;
}

// Calls on_token(word) for every whitespace-separated word and on_eos() at the end of every line,
// blank lines included; a last line without '\n' counts as a line when it is non-empty.
template <typename OnToken, typename OnEos>
void scan_tokens(std::string_view text, OnToken&& on_token, OnEos&& on_eos) {
  const char* p = text.data();
  const char* const end = p + text.size();
  bool line_open = false;  // something (even whitespace) since the last '\n'
  while (p < end) {
    const char c = *p;
    if (c == '\n') {
      on_eos();
      line_open = false;
      ++p;
    } else if (is_space(c)) {
      line_open = true;
      ++p;
    } else {
      const char* start = p;
      while (p < end && !is_space(*p)) ++p;
      on_token(std::string_view(start, static_cast<size_t>(p - start)));
      line_open = true;
    }
  }
  if (line_open) on_eos();
}

// Token ids of a file's text; words outside the vocabulary become <unk>.
torch::Tensor encode(const std::string& path, std::string_view text,
                     const std::unordered_map<std::string_view, int64_t>& lookup, int64_t eos_id,
                     int64_t unk_id) {
  std::vector<int64_t> ids;
  ids.reserve(text.size() / 5 + 16);
  int64_t words = 0;
  scan_tokens(
      text,
      [&](std::string_view word) {
        const auto it = lookup.find(word);
        ids.push_back(it == lookup.end() ? unk_id : it->second);
        ++words;
      },
      [&] { ids.push_back(eos_id); });
  if (words == 0) fail("corpus file {} is empty (no words)", path);
  auto tensor = torch::empty({static_cast<int64_t>(ids.size())}, torch::kInt64);
  std::memcpy(tensor.data_ptr<int64_t>(), ids.data(), ids.size() * sizeof(int64_t));
  return tensor;
}

// string_view -> id over the vocabulary's own strings (they outlive the map's use).
std::unordered_map<std::string_view, int64_t> make_lookup(const Vocabulary& vocabulary) {
  std::unordered_map<std::string_view, int64_t> lookup;
  lookup.reserve(static_cast<size_t>(vocabulary.size()) * 2);
  const auto& tokens = vocabulary.tokens();
  for (size_t i = 0; i < tokens.size(); ++i) lookup.emplace(tokens[i], static_cast<int64_t>(i));
  return lookup;
}

void check_specials(const Vocabulary& vocabulary) {
  if (!vocabulary.contains(kEosToken) || !vocabulary.contains(kUnkToken)) {
    fail("the vocabulary ({} entries) lacks {} or {}", vocabulary.size(), kEosToken, kUnkToken);
  }
}

}  // namespace

std::vector<std::string> split_whitespace(const std::string& line) {
  std::vector<std::string> tokens;
  const char* p = line.data();
  const char* const end = p + line.size();
  while (p < end) {
    while (p < end && is_space(*p)) ++p;
    const char* start = p;
    while (p < end && !is_space(*p)) ++p;
    if (p > start) tokens.emplace_back(start, static_cast<size_t>(p - start));
  }
  return tokens;
}

TextCorpus load_text_corpus(const std::string& directory, const VocabularyOptions& options) {
  std::error_code ec;
  const auto status = fs::status(directory, ec);
  if (!fs::exists(status)) fail("corpus directory {} does not exist", directory);
  if (!fs::is_directory(status)) fail("corpus directory {} is not a directory", directory);

  const fs::path dir(directory);
  const std::string train_path = (dir / "train.txt").string();
  const std::string valid_path = (dir / "valid.txt").string();
  const std::string test_path = (dir / "test.txt").string();
  // Read all three first, so a missing valid/test file is reported before any real work.
  const std::string train_text = read_corpus_file(train_path);
  const std::string valid_text = read_corpus_file(valid_path);
  const std::string test_text = read_corpus_file(test_path);

  // Counts keyed by views into train_text: no allocation per token.
  std::unordered_map<std::string_view, int64_t> view_counts;
  view_counts.reserve(1 << 16);
  int64_t eos_count = 0;
  int64_t words = 0;
  scan_tokens(
      train_text,
      [&](std::string_view word) {
        ++view_counts[word];
        ++words;
      },
      [&] { ++eos_count; });
  if (words == 0) fail("corpus file {} is empty (no words)", train_path);
  // A literal "<eos>" in the text counts as the same token as the end-of-line marker.
  view_counts[kEosToken] += eos_count;

  std::unordered_map<std::string, int64_t> counts;
  counts.reserve(view_counts.size());
  for (const auto& [word, count] : view_counts) counts.emplace(std::string(word), count);

  TextCorpus corpus;
  corpus.directory = directory;
  corpus.vocabulary = Vocabulary::build(counts, options);
  const auto lookup = make_lookup(corpus.vocabulary);
  const int64_t eos_id = corpus.vocabulary.eos_id();
  const int64_t unk_id = corpus.vocabulary.unk_id();
  corpus.train = encode(train_path, train_text, lookup, eos_id, unk_id);
  corpus.valid = encode(valid_path, valid_text, lookup, eos_id, unk_id);
  corpus.test = encode(test_path, test_text, lookup, eos_id, unk_id);
  return corpus;
}

torch::Tensor load_split(const std::string& path, const Vocabulary& vocabulary) {
  check_specials(vocabulary);
  const std::string text = read_corpus_file(path);
  return encode(path, text, make_lookup(vocabulary), vocabulary.eos_id(), vocabulary.unk_id());
}

}  // namespace moelab
