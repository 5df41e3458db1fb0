// The boundary between moelab and the SentencePiece library: subword_model.cpp on one side, the
// module libmoelab_sentencepiece.so (src/sentencepiece/sentencepiece_module.cpp) on the other.
// Nothing else needs this header; use moelab/data/subword_model.h.
//
// Why a module: Debian's libsentencepiece carries its own protobuf (3.14) and exports its symbols,
// and LibTorch brings another (Debian's libprotobuf 3.21, or the copy inside PyPI's torch). Linked
// into one program, whichever comes first in the symbol search also serves the other's calls, and
// the process aborts before main ("compiled against version 3.14.0 of the Protocol Buffer runtime
// library, which is not compatible with the installed version (3.21.12)"), whatever the link
// order. subword_model.cpp opens the module with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): SentencePiece
// then finds its own protobuf first, and LibTorch never sees it. Both sides share libstdc++ and
// malloc, so standard types may cross; exceptions do not (errors come back as text).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace moelab {

// One loaded SentencePiece model (a sentencepiece::SentencePieceProcessor). The methods that can
// fail return "" on success, else SentencePiece's message.
class SentencePieceHandle {
 public:
  virtual ~SentencePieceHandle() = default;
  virtual std::string encode(const std::string& text, std::vector<int>* ids) const = 0;
  virtual std::string decode(const std::vector<int>& ids, std::string* text) const = 0;
  virtual int size() const = 0;
  virtual int pad_id() const = 0;  // -1 where the model has none
  virtual int unk_id() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual std::string piece(int id) const = 0;
  virtual float score(int id) const = 0;
};

struct SentencePieceTrainResult {
  std::string model;             // the serialized model; empty when training failed
  std::string error;             // SentencePiece's message when it failed
  std::string unreadable_input;  // an input file that could not be read, if one could not
  int64_t sentences = 0;         // non-empty lines read from the inputs
};

class SentencePieceBackend {
 public:
  virtual ~SentencePieceBackend() = default;
  // Trains on the lines of `inputs` in order (a trailing '\r' removed) with SentencePiece's
  // training flags (its spm_train options without the leading "--", e.g. {"vocab_size", "8000"}).
  virtual SentencePieceTrainResult train(const std::unordered_map<std::string, std::string>& flags,
                                         const std::vector<std::string>& inputs) const = 0;
  // A model from its serialized bytes; null, with *error set, when they are not one.
  virtual std::unique_ptr<SentencePieceHandle> load(const std::string& serialized, std::string* error) const = 0;
};

// Raised whenever the classes above change, so that a module from another build is refused rather
// than misread.
constexpr int kSentencePieceBackendVersion = 1;

}  // namespace moelab

// The module's one exported function: its backend, or null when `version` is not the one it was
// built with.
extern "C" const moelab::SentencePieceBackend* moelab_sentencepiece_backend(int version);
