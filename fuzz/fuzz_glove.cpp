// A GloVe text file (word then its values per line) and the embedding table built from it.
#include "fuzz_input.h"
#include "moelab/data/glove.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(glove) {
  const auto path = moelab::fuzz::scratch_directory() + "/glove.txt";
  moelab::fuzz::write_bytes(path, std::string(reinterpret_cast<const char*>(data), size));
  try {
    const auto glove = moelab::read_glove_file(path, {"the", "cat", "<unk>", "a"});
    moelab::embedding_matrix({"<pad>", "<unk>", "the", "cat", "zebra"}, glove, nullptr);
  } catch (const moelab::Error&) {
  }
  return 0;
}
