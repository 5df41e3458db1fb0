// Subword vocabularies for translation: training and using a SentencePiece model (Kudo & Richardson
// 2018), BPE (Sennrich et al. 2016) or unigram (Kudo 2018). A model is one self-contained .model
// file; every model moelab trains reserves the same four special ids, so batching and decoding code
// can use the constants below whatever model it was given.
//
// Text passes SentencePiece's default normalisation (NFKC, runs of spaces collapsed, no leading or
// trailing space), so decode(encode(text)) == text for text already in that form, which covers
// ordinary sentences; other text comes back normalised.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moelab {

struct SubwordTrainOptions {
  /// Plain-text files, one sentence per line; several files train one joint model.
  std::vector<std::string> inputs;
  /// Pieces in the model, the four special ones included.
  int64_t vocab_size = 8000;
  /// "bpe" or "unigram".
  std::string type = "bpe";
  /// The .model file to write (replaced atomically); `<output minus .model>.vocab` lists its pieces.
  std::string output;
  /// Fraction of the characters seen that must be single pieces (SentencePiece allows 0.98 to 1).
  double character_coverage = 1.0;
  /// Train on this many sentences sampled from the inputs (with SentencePiece's fixed seed);
  /// 0 = all of them. SentencePiece requires more than 100 when set.
  int64_t max_sentences = 0;
};

// False when moelab was built without SentencePiece (libsentencepiece-dev), or with
// AddressSanitizer (which refuses how SentencePiece is loaded, see sentencepiece_backend.h): then
// training and loading throw moelab::Error saying so.
bool sentencepiece_available();

// Trains a model and writes options.output (and its .vocab listing). The same inputs and options
// give the same bytes: SentencePiece's sampling seed is fixed and its thread count does not depend
// on the machine. Throws moelab::Error (one line) for a missing input, a bad option, or data that
// cannot fill the requested vocabulary.
void train_subword_model(const SubwordTrainOptions& options);

// A loaded SentencePiece model. Copies share one processor (encoding is const and thread-safe), so
// passing a SubwordModel by value is cheap.
class SubwordModel {
 public:
  // The special ids every moelab model has (train_subword_model sets them; load checks them).
  static constexpr int64_t kPadId = 0;  // "<pad>"
  static constexpr int64_t kUnkId = 1;  // "<unk>"
  static constexpr int64_t kBosId = 2;  // "<s>"
  static constexpr int64_t kEosId = 3;  // "</s>"

  // Throws moelab::Error naming the file when it is missing, is not a SentencePiece model, or has
  // other special ids than the ones above.
  static SubwordModel load(const std::string& path);
  // The same from a model's serialized bytes (a copy kept in a run directory); `name` stands for the
  // file in messages and name().
  static SubwordModel from_bytes(const std::string& serialized, const std::string& name);

  // The serialized model, byte for byte what load read.
  const std::string& bytes() const;
  // Piece ids of `text`; no <s> or </s> is added.
  std::vector<int64_t> encode(const std::string& text) const;
  // Plain text of `ids`: <pad> and <s> are skipped, and the text ends at the first </s>. Throws
  // moelab::Error for an id outside the vocabulary.
  std::string decode(const std::vector<int64_t>& ids) const;
  // Pieces in the vocabulary, special ones included: ids run from 0 to size() - 1.
  int64_t size() const;

  int64_t pad_id() const { return kPadId; }
  int64_t unk_id() const { return kUnkId; }
  int64_t bos_id() const { return kBosId; }
  int64_t eos_id() const { return kEosId; }

  // The path the model was loaded from (or the name given to from_bytes).
  std::string name() const;

 private:
  struct Impl;
  explicit SubwordModel(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace moelab
