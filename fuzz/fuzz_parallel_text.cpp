// A translation pair of files, one sentence per line on each side.
#include "fuzz_input.h"
#include "moelab/data/parallel_corpus.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(parallel_text) {
  const auto parts = moelab::fuzz::parts_of(data, size, 2);
  const auto dir = moelab::fuzz::scratch_directory();
  moelab::fuzz::write_bytes(dir + "/train.de", parts[0]);
  moelab::fuzz::write_bytes(dir + "/train.en", parts[1]);
  try {
    moelab::read_parallel_text(dir + "/train.de", dir + "/train.en");
  } catch (const moelab::Error&) {
  }
  return 0;
}
