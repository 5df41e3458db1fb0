// A SQuAD v1.1-format QA set made from CoNLL NER data, for runs where SQuAD itself is not at hand:
// each context is a few consecutive sentences, each question asks for an entity type the context
// holds ("Which person is mentioned?"), and every entity of that type is a gold answer (the first
// one gives answer_start, as SQuAD's first answer does). Real text, a learnable question, and
// spans of 1-5 tokens like SQuAD's typical answers.
#pragma once
#include <nlohmann/json.hpp>

#include "moelab/data/conll.h"

namespace moelab {

struct ConllQaStats {
  int64_t contexts = 0;
  int64_t questions = 0;
};

// sentences_per_context > 0; sentences of one context are joined with spaces, tokens likewise.
nlohmann::json squad_from_conll(const ConllData& data, int64_t sentences_per_context, ConllQaStats* stats);

}  // namespace moelab
