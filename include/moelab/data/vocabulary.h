// Word vocabulary: token string <-> id, built from training text by frequency.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace moelab {

inline constexpr const char* kEosToken = "<eos>";
inline constexpr const char* kUnkToken = "<unk>";

struct VocabularyOptions {
  int64_t min_count = 1;  // words seen fewer times in train map to <unk>
  int64_t max_size = 0;   // keep at most this many entries (0 = no limit), specials included
};

class Vocabulary {
 public:
  Vocabulary() = default;

  // Ids are ordered by descending training frequency (ties by string), which adaptive softmax needs.
  // <eos> and <unk> are always present; they count toward max_size.
  static Vocabulary build(const std::unordered_map<std::string, int64_t>& counts, const VocabularyOptions& options);
  // One token per line, in id order (the format save_text writes).
  // Language-model vocabularies must hold <eos> and <unk>; with require_eos = false (tagging, QA),
  // only <unk>.
  static Vocabulary from_text(const std::string& text, bool require_eos = true);
  std::string to_text() const;

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t id(const std::string& token) const;  // <unk>'s id when unknown
  const std::string& token(int64_t id) const;
  bool contains(const std::string& token) const { return ids_.count(token) > 0; }
  int64_t eos_id() const { return id(kEosToken); }
  int64_t unk_id() const { return unk_id_; }
  const std::vector<std::string>& tokens() const { return tokens_; }

 private:
  void index();
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t> ids_;
  int64_t unk_id_ = -1;
};

}  // namespace moelab
