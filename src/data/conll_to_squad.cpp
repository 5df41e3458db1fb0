#include "moelab/data/conll_to_squad.h"

#include <map>

#include "moelab/data/squad.h"
#include "moelab/data/iob_entities.h"
#include "moelab/util/error.h"

namespace moelab {

namespace {

std::string question_for(const std::string& type) {
  static const std::map<std::string, std::string> questions = {{"PER", "Which person is mentioned?"},
                                                               {"LOC", "Which place is mentioned?"},
                                                               {"ORG", "Which organisation is mentioned?"},
                                                               {"MISC", "Which other name is mentioned?"}};
  const auto it = questions.find(type);
  return it != questions.end() ? it->second : "Which " + type + " is mentioned?";
}

}  // namespace

nlohmann::json squad_from_conll(const ConllData& data, int64_t sentences_per_context, ConllQaStats* stats) {
  if (sentences_per_context <= 0) fail("sentences per context must be > 0, got {}", sentences_per_context);
  ConllQaStats counted;
  nlohmann::json paragraphs = nlohmann::json::array();
  const auto& sentences = data.sentences;
  for (size_t first = 0; first < sentences.size(); first += static_cast<size_t>(sentences_per_context)) {
    const size_t last = std::min(sentences.size(), first + static_cast<size_t>(sentences_per_context));
    std::string context;
    // Per entity type: (byte offset, text) of every entity, in reading order.
    std::map<std::string, std::vector<std::pair<int64_t, std::string>>> by_type;
    for (size_t s = first; s < last; ++s) {
      const auto& sentence = sentences[s];
      std::vector<int64_t> starts;
      for (const auto& token : sentence.tokens) {
        if (!context.empty()) context += ' ';
        starts.push_back(static_cast<int64_t>(context.size()));
        context += token;
      }
      for (const auto& entity : entities_of(sentence.tags)) {
        const int64_t begin = starts[static_cast<size_t>(entity.begin)];
        const auto& last_token = sentence.tokens[static_cast<size_t>(entity.end - 1)];
        const int64_t end = starts[static_cast<size_t>(entity.end - 1)] + static_cast<int64_t>(last_token.size());
        by_type[entity.type].emplace_back(begin, context.substr(static_cast<size_t>(begin), static_cast<size_t>(end - begin)));
      }
    }
    if (by_type.empty()) continue;
    nlohmann::json qas = nlohmann::json::array();
    for (const auto& [type, entities] : by_type) {
      nlohmann::json answers = nlohmann::json::array();
      // SQuAD counts offsets in code points; they equal byte offsets only for ASCII text.
      for (const auto& [begin, text] : entities)
        answers.push_back({{"text", text}, {"answer_start", utf8_length(context.substr(0, static_cast<size_t>(begin)))}});
      qas.push_back({{"id", fmt::format("conll-{}-{}", first, type)}, {"question", question_for(type)}, {"answers", answers}});
      ++counted.questions;
    }
    paragraphs.push_back({{"context", context}, {"qas", qas}});
    ++counted.contexts;
  }
  if (stats) *stats = counted;
  return {{"version", "moelab-conll-qa-1"}, {"data", {{{"title", "conll"}, {"paragraphs", paragraphs}}}}};
}

}  // namespace moelab
