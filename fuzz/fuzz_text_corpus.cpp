// A text corpus directory (train/valid/test.txt) into a vocabulary and token streams, and a
// vocabulary file (vocab.txt) read back.
#include "fuzz_input.h"
#include "moelab/data/text_corpus.h"
#include "moelab/data/vocabulary.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(text_corpus) {
  const auto parts = moelab::fuzz::parts_of(data, size, 4);
  const auto dir = moelab::fuzz::scratch_directory();
  moelab::fuzz::write_bytes(dir + "/train.txt", parts[0]);
  moelab::fuzz::write_bytes(dir + "/valid.txt", parts[1]);
  moelab::fuzz::write_bytes(dir + "/test.txt", parts[2]);
  try {
    moelab::VocabularyOptions options;
    options.min_count = 1;
    options.max_size = 50;
    const auto corpus = moelab::load_text_corpus(dir, options);
    moelab::Vocabulary::from_text(corpus.vocabulary.to_text());
  } catch (const moelab::Error&) {
  }
  try {
    const auto vocabulary = moelab::Vocabulary::from_text(parts[3]);
    moelab::load_split(dir + "/valid.txt", vocabulary);
  } catch (const moelab::Error&) {
  }
  return 0;
}
