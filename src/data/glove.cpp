#include "moelab/data/glove.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "moelab/util/error.h"

namespace moelab {

namespace {

constexpr const char* kPad = "<pad>";
constexpr const char* kUnk = "<unk>";

// Parses the values after the word; returns how many there were (all parsed into `out` when it has room).
int64_t parse_values(const std::string& line, size_t start, std::vector<float>& out, bool keep,
                     const std::string& path, int64_t line_number) {
  int64_t count = 0;
  const char* p = line.c_str() + start;
  const char* end = line.c_str() + line.size();
  while (p < end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) ++p;
    if (p >= end) break;
    if (keep) {
      char* after = nullptr;
      errno = 0;
      const float v = std::strtof(p, &after);
      if (after == p || (after < end && *after != ' ' && *after != '\t' && *after != '\r'))
        fail("{}:{}: value {} is not a number", path, line_number, count + 1);
      // strtof reads "nan" and "inf", and turns a value beyond float's range into inf: one such
      // value would make every embedding it touches, and then the whole model, nan.
      if (!std::isfinite(v))
        fail("{}:{}: value {} is not a finite float ('{}')", path, line_number, count + 1,
             std::string(p, static_cast<size_t>(after - p)));
      out.push_back(v);
      p = after;
    } else {
      while (p < end && *p != ' ' && *p != '\t' && *p != '\r') ++p;
    }
    ++count;
  }
  return count;
}

}  // namespace

GloveVectors read_glove_file(const std::string& path, const std::unordered_set<std::string>& wanted) {
  std::ifstream in(path);
  if (!in) fail("cannot read GloVe file {}", path);
  GloveVectors glove;
  std::vector<float> kept;  // row-major values of the kept rows
  std::vector<float> values;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty() || line == "\r") continue;
    const size_t space = line.find_first_of(" \t");
    if (space == std::string::npos || space == 0)
      fail("{}:{}: expected a word followed by its vector values", path, line_number);
    const std::string word = line.substr(0, space);
    const bool is_unk = word == kUnk;
    const bool keep = (is_unk && !glove.has_unk) || (wanted.count(word) > 0 && glove.rows.count(word) == 0);
    values.clear();
    const int64_t count = parse_values(line, space, values, keep, path, line_number);
    if (count == 0) fail("{}:{}: the word '{}' has no vector values", path, line_number, word);
    if (glove.dim == 0) glove.dim = count;
    if (count != glove.dim)
      fail("{}:{}: {} values, but the first vector has {} (dimension mismatch between lines)", path, line_number,
           count, glove.dim);
    ++glove.lines_read;
    if (!keep) continue;
    if (is_unk) {
      glove.has_unk = true;
      glove.unk = torch::tensor(values);
      if (wanted.count(word) == 0) continue;
    }
    glove.rows.emplace(word, static_cast<int64_t>(glove.rows.size()));
    kept.insert(kept.end(), values.begin(), values.end());
  }
  if (glove.lines_read == 0) fail("GloVe file {} holds no vector", path);
  glove.vectors = torch::tensor(kept).view({static_cast<int64_t>(glove.rows.size()), glove.dim});
  return glove;
}

torch::Tensor embedding_matrix(const std::vector<std::string>& words, const GloveVectors& glove, int64_t* found) {
  const auto rows = static_cast<int64_t>(words.size());
  const bool any = glove.vectors.size(0) > 0;
  // Missing words start at the scale of the file's own vectors, so they neither dominate nor vanish.
  const double scale = any ? glove.vectors.std().item<double>() : 0.1;
  auto matrix = torch::randn({rows, glove.dim}) * scale;
  const auto unk = glove.has_unk ? glove.unk : (any ? glove.vectors.mean(0) : torch::zeros({glove.dim}));
  int64_t hits = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const auto& word = words[static_cast<size_t>(i)];
    if (word == kPad) {
      matrix[i].zero_();
    } else if (word == kUnk) {
      matrix[i].copy_(unk);
    } else if (const auto it = glove.rows.find(word); it != glove.rows.end()) {
      matrix[i].copy_(glove.vectors[it->second]);
      ++hits;
    }
  }
  if (found) *found = hits;
  return matrix;
}

}  // namespace moelab
