// GloVe text-format word vectors (`word v1 ... vd` per line, any d): read by streaming the file and
// keeping only the rows a vocabulary asks for, so a multi-gigabyte file costs the memory of the
// kept rows alone.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace moelab {

struct GloveVectors {
  int64_t dim = 0;
  int64_t lines_read = 0;                          // vectors in the file
  std::unordered_map<std::string, int64_t> rows;   // kept word -> row of `vectors`
  torch::Tensor vectors;                           // [kept, dim] float
  bool has_unk = false;                            // the file had an `<unk>` row (kept whenever present)
  torch::Tensor unk;                               // [dim]: the file's <unk>, or undefined
};

// Reads the rows of `wanted` words (and `<unk>`). Throws Error naming the file and line for a line
// whose number of values differs from the first line's, a value that is not a number, or a file with
// no vector.
GloveVectors read_glove_file(const std::string& path, const std::unordered_set<std::string>& wanted);

// An embedding matrix for `words` (row i for words[i]): GloVe rows where the file has the word,
// zeros for `<pad>`, the file's `<unk>` (else the mean of the kept rows) for `<unk>`, and
// N(0, std of the kept values) for words the file lacks. `found` counts words taken from the file.
torch::Tensor embedding_matrix(const std::vector<std::string>& words, const GloveVectors& glove, int64_t* found);

}  // namespace moelab
