// Tagging metrics: token accuracy (the gating study's number) and entity-level precision, recall
// and F1 with conlleval's semantics (the field's number): an entity counts as correct only when its
// type and both boundaries match exactly; a partial overlap is one false positive and one false
// negative.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "moelab/data/iob_entities.h"

namespace moelab {

struct EntityCounts {
  int64_t gold = 0, predicted = 0, correct = 0;
  double precision() const;  // correct / predicted (0 when nothing predicted)
  double recall() const;     // correct / gold (0 when no gold entity)
  double f1() const;         // harmonic mean (0 when both are 0)
};

// Accumulates sentences; per-type counts and the overall figures.
class EntityScorer {
 public:
  // gold and predicted tags of one sentence, same length (checked).
  void add(const std::vector<std::string>& gold, const std::vector<std::string>& predicted);
  const EntityCounts& overall() const { return overall_; }
  const std::map<std::string, EntityCounts>& by_type() const { return by_type_; }
  double token_accuracy() const;  // over every token added

 private:
  EntityCounts overall_;
  std::map<std::string, EntityCounts> by_type_;
  int64_t tokens_ = 0, tokens_correct_ = 0;
};

}  // namespace moelab
