#include "moelab/train/tagging_metrics.h"

#include <algorithm>
#include <tuple>

#include "moelab/util/error.h"

namespace moelab {

double EntityCounts::precision() const { return predicted > 0 ? static_cast<double>(correct) / predicted : 0.0; }
double EntityCounts::recall() const { return gold > 0 ? static_cast<double>(correct) / gold : 0.0; }
double EntityCounts::f1() const {
  const double p = precision(), r = recall();
  return p + r > 0 ? 2 * p * r / (p + r) : 0.0;
}

void EntityScorer::add(const std::vector<std::string>& gold, const std::vector<std::string>& predicted) {
  if (gold.size() != predicted.size())
    fail("entity scoring: {} gold tags but {} predicted", gold.size(), predicted.size());
  for (size_t i = 0; i < gold.size(); ++i) tokens_correct_ += gold[i] == predicted[i];
  tokens_ += static_cast<int64_t>(gold.size());
  auto gold_entities = entities_of(gold), predicted_entities = entities_of(predicted);
  std::sort(gold_entities.begin(), gold_entities.end());
  std::sort(predicted_entities.begin(), predicted_entities.end());
  std::vector<Entity> correct;
  std::set_intersection(gold_entities.begin(), gold_entities.end(), predicted_entities.begin(),
                        predicted_entities.end(), std::back_inserter(correct));
  auto count = [&](const std::vector<Entity>& entities, int64_t EntityCounts::*field) {
    for (const auto& e : entities) {
      ++(overall_.*field);
      ++(by_type_[e.type].*field);
    }
  };
  count(gold_entities, &EntityCounts::gold);
  count(predicted_entities, &EntityCounts::predicted);
  count(correct, &EntityCounts::correct);
}

double EntityScorer::token_accuracy() const {
  return tokens_ > 0 ? static_cast<double>(tokens_correct_) / static_cast<double>(tokens_) : 0.0;
}

}  // namespace moelab
