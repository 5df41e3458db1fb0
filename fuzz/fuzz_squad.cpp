// A SQuAD v1.1 JSON file, with and without the length limits a QA run applies.
#include "fuzz_input.h"
#include "moelab/data/squad.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(squad) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (const int64_t limit : {0, 8}) {
    moelab::SquadOptions options;
    options.max_context_tokens = limit * 10;
    options.max_question_tokens = limit;
    options.max_answer_tokens = limit / 2;
    try {
      moelab::parse_squad_json(text, "fuzz.json", options);
    } catch (const moelab::Error&) {
    }
  }
  return 0;
}
