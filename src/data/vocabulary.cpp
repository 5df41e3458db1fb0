#include "moelab/data/vocabulary.h"

#include <algorithm>
#include <string_view>
#include <utility>

#include "moelab/util/error.h"

namespace moelab {
namespace {

bool is_special(const std::string& token) { return token == kEosToken || token == kUnkToken; }

// Descending count, ties broken by ascending string: the id order adaptive softmax relies on.
bool frequency_order(const std::pair<std::string, int64_t>& a, const std::pair<std::string, int64_t>& b) {
  if (a.second != b.second) return a.second > b.second;
  return a.first < b.first;
}

// A token must survive the one-token-per-line text format.
void check_token(const std::string& token) {
  if (token.empty()) fail("vocabulary token is empty");
  if (token.find_first_of("\n\r") != std::string::npos) {
    fail("vocabulary token '{}' contains a line break", token);
  }
}

}  // namespace

Vocabulary Vocabulary::build(const std::unordered_map<std::string, int64_t>& counts,
                             const VocabularyOptions& options) {
  if (options.min_count < 0) fail("vocabulary min_count must be >= 0, got {}", options.min_count);
  if (options.max_size < 0) fail("vocabulary max_size must be >= 0 (0 = no limit), got {}", options.max_size);
  if (options.max_size == 1) {
    fail("vocabulary max_size = 1 is too small: <eos> and <unk> need at least 2 entries (0 = no limit)");
  }

  std::vector<std::pair<std::string, int64_t>> specials;
  std::vector<std::pair<std::string, int64_t>> words;
  words.reserve(counts.size());
  for (const auto& [token, count] : counts) {
    check_token(token);
    if (count < 0) fail("vocabulary count of '{}' is negative ({})", token, count);
    if (is_special(token)) {
      specials.emplace_back(token, count);
    } else if (count >= options.min_count) {
      words.emplace_back(token, count);
    }
  }
  // Specials missing from the counts get count 0, so they sort after every real word.
  for (const char* special : {kEosToken, kUnkToken}) {
    if (counts.count(special) == 0) specials.emplace_back(special, 0);
  }

  std::sort(words.begin(), words.end(), frequency_order);
  if (options.max_size > 0) {
    const auto room = static_cast<size_t>(options.max_size - 2);  // both specials always stay
    if (words.size() > room) words.resize(room);
  }
  words.insert(words.end(), specials.begin(), specials.end());
  std::sort(words.begin(), words.end(), frequency_order);

  Vocabulary vocabulary;
  vocabulary.tokens_.reserve(words.size());
  for (auto& entry : words) vocabulary.tokens_.push_back(std::move(entry.first));
  vocabulary.index();
  return vocabulary;
}

Vocabulary Vocabulary::from_text(const std::string& text, bool require_eos) {
  Vocabulary vocabulary;
  size_t line_number = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    ++line_number;
    if (line.empty()) fail("vocabulary line {} is empty (expected one token per line)", line_number);
    vocabulary.tokens_.emplace_back(line);
    start = end + 1;
  }
  if (vocabulary.tokens_.empty()) fail("vocabulary text is empty (expected one token per line)");
  vocabulary.index();
  if (vocabulary.ids_.size() != vocabulary.tokens_.size()) {
    for (size_t i = 0; i < vocabulary.tokens_.size(); ++i) {
      if (vocabulary.ids_.at(vocabulary.tokens_[i]) != static_cast<int64_t>(i)) {
        fail("vocabulary token '{}' appears more than once (line {})", vocabulary.tokens_[i], i + 1);
      }
    }
  }
  for (const char* special : {kEosToken, kUnkToken}) {
    if (special == kEosToken && !require_eos) continue;
    if (!vocabulary.contains(special)) fail("vocabulary text lacks the special token {}", special);
  }
  return vocabulary;
}

std::string Vocabulary::to_text() const {
  std::string text;
  size_t total = 0;
  for (const auto& token : tokens_) total += token.size() + 1;
  text.reserve(total);
  for (const auto& token : tokens_) {
    text += token;
    text += '\n';
  }
  return text;
}

int64_t Vocabulary::id(const std::string& token) const {
  const auto it = ids_.find(token);
  return it == ids_.end() ? unk_id_ : it->second;
}

const std::string& Vocabulary::token(int64_t id) const {
  if (id < 0 || id >= size()) fail("token id {} is outside the vocabulary [0, {})", id, size());
  return tokens_[static_cast<size_t>(id)];
}

void Vocabulary::index() {
  ids_.clear();
  ids_.reserve(tokens_.size());
  // First occurrence wins, so a duplicate shows up as ids_.size() < tokens_.size().
  for (size_t i = 0; i < tokens_.size(); ++i) ids_.emplace(tokens_[i], static_cast<int64_t>(i));
  const auto unk = ids_.find(kUnkToken);
  unk_id_ = unk == ids_.end() ? -1 : unk->second;
}

}  // namespace moelab
