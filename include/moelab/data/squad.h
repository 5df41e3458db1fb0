// SQuAD v1.1 JSON (data[].paragraphs[].context / qas[].question, id, answers[].text, answer_start):
// contexts and questions tokenised with punctuation kept as tokens, and each answer's character
// span mapped onto context tokens. Offsets in the file count Unicode code points (the data set was
// made in Python); they are converted to UTF-8 byte offsets on read.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct TextToken {
  std::string text;
  int64_t begin = 0;  // byte offset of the first byte in the source text
  int64_t end = 0;    // one past the last byte
};

// Words are runs of letters, digits and bytes of non-ASCII characters; every ASCII punctuation mark
// and every Unicode dash, quote or ellipsis (U+2010..U+2027) is a token of its own; whitespace
// separates and is dropped.
std::vector<TextToken> tokenize_with_offsets(const std::string& text);

// Number of code points in UTF-8 `text` (the unit SQuAD's answer_start counts in).
int64_t utf8_length(const std::string& text);

// Byte offset of the code point with index `code_point` in UTF-8 `text` (text.size() for the end);
// -1 when the text has fewer code points.
int64_t utf8_byte_offset(const std::string& text, int64_t code_point);

struct QaExample {
  std::string id;
  std::string context;                  // the paragraph, to cut predicted answers from
  std::vector<TextToken> context_tokens;
  std::vector<std::string> question_tokens;
  int64_t answer_start = 0;             // first answer: first context token
  int64_t answer_end = 0;               // first answer: last context token (inclusive)
  std::vector<std::string> answers;     // every gold answer text, for EM / F1
};

struct SquadOptions {
  int64_t max_context_tokens = 0;   // longer contexts are dropped (0 = keep all)
  int64_t max_question_tokens = 0;  // longer questions are dropped (0 = keep all)
  int64_t max_answer_tokens = 0;    // questions whose first answer is longer are dropped (0 = keep all)
};

struct SquadData {
  std::vector<QaExample> examples;
  int64_t paragraphs = 0;
  int64_t questions = 0;               // in the file
  int64_t dropped_long_context = 0;
  int64_t dropped_long_question = 0;
  int64_t dropped_long_answer = 0;
  int64_t dropped_no_answer = 0;       // questions without any answer
  int64_t answer_text_mismatch = 0;    // the context at answer_start does not read as the answer text
  // Where the file came from when `moelab data squad-split` wrote it ("" otherwise), e.g. "split of
  // dev-v1.1.json by article (seed 1): 36 of 48 articles; not the official SQuAD training set".
  std::string provenance;
};

// Throws Error naming the file and question id for a malformed file or an answer whose offset
// lies outside its context.
SquadData read_squad_file(const std::string& path, const SquadOptions& options);
SquadData parse_squad_json(const std::string& json_text, const std::string& source_name, const SquadOptions& options);

}  // namespace moelab
