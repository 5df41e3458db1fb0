#include "moelab/data/task_vocabulary.h"

#include <algorithm>
#include <cctype>

#include "moelab/data/glove.h"
#include "moelab/util/error.h"

namespace moelab {

std::string lookup_form(const std::string& word, bool lowercase) {
  if (!lowercase) return word;
  std::string out = word;
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

TaskVocabulary build_task_vocabulary(const std::unordered_map<std::string, int64_t>& train_counts,
                                     const std::unordered_set<std::string>& other_words,
                                     const TaskVocabularyOptions& options) {
  TaskVocabulary result;
  GloveVectors glove;
  const bool pretrained = !options.embeddings_path.empty();
  if (pretrained) {
    std::unordered_set<std::string> wanted = other_words;
    for (const auto& [word, count] : train_counts) wanted.insert(word);
    glove = read_glove_file(options.embeddings_path, wanted);
    if (glove.dim != options.embed_dim)
      fail("{} holds {}-dimensional vectors but model.embed = {}; set model.embed = {}", options.embeddings_path,
           glove.dim, options.embed_dim, glove.dim);
    result.glove_vectors = glove.lines_read;
  }
  std::vector<std::pair<std::string, int64_t>> kept;
  for (const auto& [word, count] : train_counts)
    if (count >= options.min_count || (pretrained && glove.rows.count(word)))
      kept.emplace_back(word, count);
  if (pretrained)
    for (const auto& word : other_words)
      if (!train_counts.count(word) && glove.rows.count(word)) kept.emplace_back(word, 0);
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::unordered_set<std::string> special = {kPadToken, kUnkToken};
  std::string text = std::string(kPadToken) + "\n" + kUnkToken + "\n";
  for (const auto& marker : options.specials)
    if (special.insert(marker).second) text += marker + "\n";
  for (const auto& [word, count] : kept)
    if (!special.count(word)) text += word + "\n";
  result.words = Vocabulary::from_text(text, /*require_eos=*/false);
  if (pretrained) result.embeddings = embedding_matrix(result.words.tokens(), glove, &result.embeddings_found);
  return result;
}

TaskVocabulary task_vocabulary_for_run(const Config& config, const std::optional<std::string>& saved_vocabulary,
                                       const std::unordered_map<std::string, int64_t>& train_counts,
                                       const std::unordered_set<std::string>& other_words,
                                       const std::vector<std::string>& specials) {
  if (saved_vocabulary) {
    TaskVocabulary saved;
    saved.words = Vocabulary::from_text(*saved_vocabulary, /*require_eos=*/false);
    return saved;
  }
  TaskVocabularyOptions options;
  options.min_count = config.get_int("data.min_count");
  options.embeddings_path = config.get_string("data.embeddings");
  options.embed_dim = config.get_int("model.embed");
  options.specials = specials;
  return build_task_vocabulary(train_counts, other_words, options);
}

}  // namespace moelab
