#include "moelab/data/squad.h"

#include <nlohmann/json.hpp>

#include <cctype>

#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab {

namespace {

bool is_word_byte(unsigned char c) { return std::isalnum(c) || c >= 0x80; }

// Length of a U+2010..U+2027 punctuation character starting at i (UTF-8 E2 80 90..A7), else 0.
size_t unicode_punctuation_length(const std::string& s, size_t i) {
  if (i + 2 < s.size() && static_cast<unsigned char>(s[i]) == 0xE2 && static_cast<unsigned char>(s[i + 1]) == 0x80) {
    const auto third = static_cast<unsigned char>(s[i + 2]);
    if (third >= 0x90 && third <= 0xA7) return 3;
  }
  return 0;
}

}  // namespace

std::vector<TextToken> tokenize_with_offsets(const std::string& text) {
  std::vector<TextToken> tokens;
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (std::isspace(c)) {
      ++i;
      continue;
    }
    size_t end = i;
    if (const size_t punct = unicode_punctuation_length(text, i)) {
      end = i + punct;
    } else if (is_word_byte(c)) {
      while (end < text.size() && is_word_byte(static_cast<unsigned char>(text[end])) &&
             unicode_punctuation_length(text, end) == 0)
        ++end;
    } else {
      end = i + 1;  // ASCII punctuation or a control byte
    }
    tokens.push_back({text.substr(i, end - i), static_cast<int64_t>(i), static_cast<int64_t>(end)});
    i = end;
  }
  return tokens;
}

int64_t utf8_length(const std::string& text) {
  int64_t n = 0;
  for (const char c : text) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;  // skip continuation bytes
  return n;
}

int64_t utf8_byte_offset(const std::string& text, int64_t code_point) {
  if (code_point < 0) return -1;
  int64_t seen = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;  // continuation byte
    if (seen == code_point) return static_cast<int64_t>(i);
    ++seen;
  }
  return seen == code_point ? static_cast<int64_t>(text.size()) : -1;
}

SquadData parse_squad_json(const std::string& json_text, const std::string& source_name,
                           const SquadOptions& options) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", source_name, e.what());
  }
  if (!root.is_object() || !root.contains("data") || !root["data"].is_array())
    fail("{}: expected a SQuAD object with a \"data\" list", source_name);
  SquadData data;
  if (root.contains("moelab_split") && root["moelab_split"].is_object())
    data.provenance = root["moelab_split"].value("provenance", std::string());
  try {
    for (const auto& article : root["data"]) {
      for (const auto& paragraph : article.at("paragraphs")) {
        ++data.paragraphs;
        const std::string context = paragraph.at("context").get<std::string>();
        const auto context_tokens = tokenize_with_offsets(context);
        for (const auto& qa : paragraph.at("qas")) {
          ++data.questions;
          QaExample example;
          example.id = qa.value("id", fmt::format("#{}", data.questions));
          const auto& answers = qa.at("answers");
          if (answers.empty()) {
            ++data.dropped_no_answer;
            continue;
          }
          for (const auto& answer : answers) example.answers.push_back(answer.at("text").get<std::string>());
          const auto& first = answers.at(0);
          // get<int64_t> would truncate 12.7 to 12 and point at the wrong characters without a word.
          const auto& start_value = first.at("answer_start");
          if (!start_value.is_number_integer())
            fail("{}: question {}: answer_start must be a whole number of characters, got {}", source_name,
                 example.id, start_value.dump());
          const auto start_char = start_value.get<int64_t>();
          const std::string& answer_text = example.answers.front();
          const int64_t begin = utf8_byte_offset(context, start_char);
          const int64_t end = begin < 0 ? -1 : begin + static_cast<int64_t>(answer_text.size());
          if (begin < 0 || end > static_cast<int64_t>(context.size()) || answer_text.empty())
            fail("{}: question {}: answer offset {} (\"{}\") lies outside its context of {} characters", source_name,
                 example.id, start_char, answer_text, utf8_length(context));
          if (context.compare(static_cast<size_t>(begin), answer_text.size(), answer_text) != 0)
            ++data.answer_text_mismatch;
          // The answer's tokens: every context token overlapping its byte span.
          int64_t first_token = -1, last_token = -1;
          for (size_t t = 0; t < context_tokens.size(); ++t) {
            if (context_tokens[t].end <= begin || context_tokens[t].begin >= end) continue;
            if (first_token < 0) first_token = static_cast<int64_t>(t);
            last_token = static_cast<int64_t>(t);
          }
          if (first_token < 0)
            fail("{}: question {}: the answer at offset {} covers no token of its context", source_name, example.id,
                 start_char);
          for (const auto& token : tokenize_with_offsets(qa.at("question").get<std::string>()))
            example.question_tokens.push_back(token.text);
          if (options.max_context_tokens > 0 && static_cast<int64_t>(context_tokens.size()) > options.max_context_tokens) {
            ++data.dropped_long_context;
            continue;
          }
          if (example.question_tokens.empty() ||
              (options.max_question_tokens > 0 &&
               static_cast<int64_t>(example.question_tokens.size()) > options.max_question_tokens)) {
            ++data.dropped_long_question;
            continue;
          }
          if (options.max_answer_tokens > 0 && last_token - first_token + 1 > options.max_answer_tokens) {
            ++data.dropped_long_answer;
            continue;
          }
          example.context = context;
          example.context_tokens = context_tokens;
          example.answer_start = first_token;
          example.answer_end = last_token;
          data.examples.push_back(std::move(example));
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a SQuAD v1.1 file ({})", source_name, e.what());
  }
  if (data.examples.empty())
    fail("{}: no question left to use ({} read; {} long contexts, {} long questions, {} long answers dropped)",
         source_name, data.questions, data.dropped_long_context, data.dropped_long_question, data.dropped_long_answer);
  return data;
}

SquadData read_squad_file(const std::string& path, const SquadOptions& options) {
  if (!file_exists(path)) fail("SQuAD file {} does not exist", path);
  return parse_squad_json(read_text_file(path), path, options);
}

}  // namespace moelab
