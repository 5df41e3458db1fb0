#include "moelab/data/iob_entities.h"

#include <tuple>

namespace moelab {

bool Entity::operator<(const Entity& other) const {
  return std::tie(begin, end, type) < std::tie(other.begin, other.end, other.type);
}
bool Entity::operator==(const Entity& other) const {
  return begin == other.begin && end == other.end && type == other.type;
}

std::vector<Entity> entities_of(const std::vector<std::string>& tags) {
  std::vector<Entity> entities;
  auto prefix_of = [](const std::string& tag) { return tag.size() > 2 && tag[1] == '-' ? tag[0] : 'O'; };
  auto type_of = [](const std::string& tag) { return tag.size() > 2 && tag[1] == '-' ? tag.substr(2) : std::string(); };
  const int64_t n = static_cast<int64_t>(tags.size());
  for (int64_t i = 0; i < n;) {
    const char prefix = prefix_of(tags[i]);
    if (prefix == 'O') {
      ++i;
      continue;
    }
    Entity entity{i, i + 1, type_of(tags[i])};
    while (entity.end < n && prefix_of(tags[entity.end]) == 'I' && type_of(tags[entity.end]) == entity.type) ++entity.end;
    entities.push_back(entity);
    i = entity.end;
  }
  return entities;
}

}  // namespace moelab
