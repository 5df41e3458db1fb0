#include "moelab/data/squad_split.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "moelab/util/error.h"
#include "moelab/util/mix64.h"

namespace moelab {

SquadSplit split_squad_by_article(const nlohmann::json& squad, int64_t train_articles, int64_t valid_articles,
                                  uint64_t seed, const std::string& source) {
  if (!squad.is_object() || !squad.contains("data") || !squad["data"].is_array())
    fail("{}: not a SQuAD v1.1 file (no \"data\" list of articles)", source);
  const auto& articles = squad["data"];
  const auto count = static_cast<int64_t>(articles.size());
  if (count == 0) fail("{}: the file has no articles", source);
  if (train_articles < 1 || valid_articles < 0 || train_articles + valid_articles >= count)
    fail("{}: {} train and {} validation articles leave no test article (the file has {})", source, train_articles,
         valid_articles, count);

  // Fisher-Yates with draws from mix64, so a seed gives the same split with any standard library.
  std::vector<int64_t> order(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) order[static_cast<size_t>(i)] = i;
  for (int64_t i = count - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(mix64(mix64(seed) ^ static_cast<uint64_t>(i)) % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  std::vector<int> side(static_cast<size_t>(count));
  for (int64_t rank = 0; rank < count; ++rank)
    side[static_cast<size_t>(order[static_cast<size_t>(rank)])] =
        rank < train_articles ? 0 : rank < train_articles + valid_articles ? 1 : 2;

  SquadSplit split;
  nlohmann::json* documents[3] = {&split.train, &split.valid, &split.test};
  for (auto* document : documents) {
    *document = {{"version", squad.value("version", std::string("1.1"))}, {"data", nlohmann::json::array()}};
  }
  for (int64_t a = 0; a < count; ++a) {
    const auto& article = articles[static_cast<size_t>(a)];
    const int s = side[static_cast<size_t>(a)];
    (*documents[s])["data"].push_back(article);
    ++split.articles[s];
    if (!article.contains("paragraphs") || !article["paragraphs"].is_array())
      fail("{}: article {} has no \"paragraphs\" list", source, a + 1);
    for (const auto& paragraph : article["paragraphs"]) {
      ++split.paragraphs[s];
      if (paragraph.contains("qas") && paragraph["qas"].is_array())
        split.questions[s] += static_cast<int64_t>(paragraph["qas"].size());
    }
  }
  // Every file says what it is, and the QA task repeats it in each run's summary.
  const char* names[] = {"train", "valid", "test"};
  for (int s = 0; s < 3; ++s)
    (*documents[s])["moelab_split"] = {
        {"provenance", fmt::format("{} side of {} split by article (seed {}): {} of its {} articles; not the official "
                                   "SQuAD training set",
                                   names[s], source, seed, split.articles[s], count)},
        {"seed", seed},
        {"side", names[s]}};
  if (valid_articles == 0) split.valid = nlohmann::json();
  return split;
}

}  // namespace moelab
