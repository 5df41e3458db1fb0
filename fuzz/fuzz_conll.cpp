// A CoNLL-2003 file (word and tags per line, blank lines between sentences, -DOCSTART-).
#include "fuzz_input.h"
#include "moelab/data/conll.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(conll) {
  const auto path = moelab::fuzz::scratch_directory() + "/input.conll";
  moelab::fuzz::write_bytes(path, std::string(reinterpret_cast<const char*>(data), size));
  try {
    moelab::read_conll_file(path);
  } catch (const moelab::Error&) {
  }
  return 0;
}
