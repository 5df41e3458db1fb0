#include "moelab/data/conll.h"

#include <fstream>

#include "moelab/data/text_corpus.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

// "B-PER" -> ('B', "PER"); "O" -> ('O', ""); anything else -> ('?', "").
std::pair<char, std::string> split_tag(const std::string& tag) {
  if (tag == "O") return {'O', ""};
  if (tag.size() > 2 && (tag[0] == 'B' || tag[0] == 'I') && tag[1] == '-') return {tag[0], tag.substr(2)};
  return {'?', ""};
}

// Whether an I-X at position i continues an entity of type X (IOB1 and IOB2 agree on that).
bool continues_entity(const std::vector<std::string>& tags, size_t i, const std::string& type) {
  if (i == 0) return false;
  const auto [prefix, previous_type] = split_tag(tags[i - 1]);
  return prefix != 'O' && previous_type == type;
}

}  // namespace

int64_t iob1_to_iob2(std::vector<std::string>& tags) {
  int64_t converted = 0;
  for (size_t i = 0; i < tags.size(); ++i) {
    const auto [prefix, type] = split_tag(tags[i]);
    if (prefix == 'I' && !continues_entity(tags, i, type)) {
      tags[i] = "B-" + type;
      ++converted;
    }
  }
  return converted;
}

ConllData read_conll_file(const std::string& path) {
  if (!file_exists(path)) fail("CoNLL file {} does not exist", path);
  std::ifstream in(path);
  if (!in) fail("cannot read CoNLL file {}", path);
  ConllData data;
  TaggedSentence sentence;
  auto end_sentence = [&] {
    if (!sentence.tokens.empty()) data.sentences.push_back(std::move(sentence));
    sentence = TaggedSentence();
  };
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    const auto columns = split_whitespace(line);
    if (columns.empty()) {
      end_sentence();
      continue;
    }
    if (columns[0] == "-DOCSTART-") {
      end_sentence();
      ++data.documents;
      continue;
    }
    if (columns.size() < 2)
      fail("{}:{}: expected a token and a tag (whitespace-separated columns), got '{}'", path, line_number, line);
    const auto& tag = columns.back();
    if (split_tag(tag).first == '?')
      fail("{}:{}: tag '{}' is neither O nor B-TYPE / I-TYPE", path, line_number, tag);
    sentence.tokens.push_back(columns.front());
    sentence.tags.push_back(tag);
  }
  end_sentence();
  if (data.sentences.empty()) fail("CoNLL file {} holds no sentence", path);
  for (auto& s : data.sentences) data.entities_converted += iob1_to_iob2(s.tags);
  data.scheme_found = data.entities_converted > 0 ? "IOB1" : "IOB2";
  return data;
}

}  // namespace moelab
