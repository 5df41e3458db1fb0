// Entities in a sequence of IOB tags (CoNLL), read as conlleval does. Shared by the CoNLL-to-SQuAD
// conversion (data/) and the tagging metrics (train/).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

struct Entity {
  int64_t begin = 0;  // first token
  int64_t end = 0;    // one past the last token
  std::string type;
  bool operator<(const Entity& other) const;
  bool operator==(const Entity& other) const;
};

// Entities of one tag sequence, read as conlleval does: an entity starts at B-X, or at I-X after O
// or another type, and ends before O, B-, or a different type.
std::vector<Entity> entities_of(const std::vector<std::string>& tags);

}  // namespace moelab
