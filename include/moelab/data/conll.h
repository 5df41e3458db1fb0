// CoNLL-2003 style tagging data: one token per line with whitespace-separated columns (token, POS,
// chunk, NER for CoNLL-2003; the tag is the last column, as conlleval reads it), blank lines between
// sentences, `-DOCSTART-` lines between documents. Entity tags in IOB1 or IOB2 are read into IOB2.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct TaggedSentence {
  std::vector<std::string> tokens;
  std::vector<std::string> tags;  // IOB2 after reading
};

struct ConllData {
  std::vector<TaggedSentence> sentences;
  // "IOB1" when some entity began with I- (which IOB2 forbids), else "IOB2" (files with neither a
  // B- nor an I- tag count as IOB2 too).
  std::string scheme_found;
  int64_t entities_converted = 0;  // I- tags that began an entity and were rewritten to B-
  int64_t documents = 0;           // -DOCSTART- lines
};

// Throws moelab::Error naming the file and line for a line with one column, a tag that is neither
// O nor B-/I- with a type, or a file with no sentence.
ConllData read_conll_file(const std::string& path);

// IOB1 -> IOB2 in place: an I-X that does not continue an X entity becomes B-X. Returns how many.
int64_t iob1_to_iob2(std::vector<std::string>& tags);

}  // namespace moelab
