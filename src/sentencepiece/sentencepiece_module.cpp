// SentencePiece behind moelab's SentencePieceBackend: the only code that includes SentencePiece's
// headers. CMake builds it as its own module, libmoelab_sentencepiece.so, which subword_model.cpp
// opens at first use; sentencepiece_backend.h says why it is not linked into moelab.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <fstream>

#include "moelab/data/sentencepiece_backend.h"

namespace moelab {

namespace {

// The lines of the input files in order, a trailing '\r' removed (as read_parallel_text does).
// SentencePiece's own file reader would take the paths as one comma-separated flag, which breaks
// on a path holding a comma, and could not say which file it failed to read.
class InputLines : public sentencepiece::SentenceIterator {
 public:
  explicit InputLines(std::vector<std::string> paths) : paths_(std::move(paths)) { Next(); }

  bool done() const override { return done_; }
  const std::string& value() const override { return line_; }
  sentencepiece::util::Status status() const override {
    if (unreadable_.empty()) return sentencepiece::util::Status();
    return sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound, "cannot read " + unreadable_);
  }
  void Next() override {
    while (!done_) {
      if (in_.is_open() && std::getline(in_, line_)) {
        if (!line_.empty() && line_.back() == '\r') line_.pop_back();
        if (!line_.empty()) ++sentences_;
        return;
      }
      if (in_.is_open() && in_.bad()) return finish(paths_[next_path_ - 1]);
      if (next_path_ == paths_.size()) return finish("");
      in_ = std::ifstream(paths_[next_path_++], std::ios::binary);
      if (!in_) return finish(paths_[next_path_ - 1]);
    }
  }

  const std::string& unreadable() const { return unreadable_; }
  int64_t sentences() const { return sentences_; }

 private:
  void finish(const std::string& unreadable) {
    done_ = true;
    unreadable_ = unreadable;
    line_.clear();
  }

  std::vector<std::string> paths_;
  size_t next_path_ = 0;
  std::ifstream in_;
  std::string line_;
  std::string unreadable_;
  int64_t sentences_ = 0;
  bool done_ = false;
};

std::string message_of(const sentencepiece::util::Status& status) {
  return status.ok() ? "" : std::string(status.message());
}

class Processor : public SentencePieceHandle {
 public:
  sentencepiece::SentencePieceProcessor processor;

  std::string encode(const std::string& text, std::vector<int>* ids) const override {
    return message_of(processor.Encode(text, ids));
  }
  std::string decode(const std::vector<int>& ids, std::string* text) const override {
    return message_of(processor.Decode(ids, text));
  }
  int size() const override { return processor.GetPieceSize(); }
  int pad_id() const override { return processor.pad_id(); }
  int unk_id() const override { return processor.unk_id(); }
  int bos_id() const override { return processor.bos_id(); }
  int eos_id() const override { return processor.eos_id(); }
  std::string piece(int id) const override { return processor.IdToPiece(id); }
  float score(int id) const override { return processor.GetScore(id); }
};

class Backend : public SentencePieceBackend {
 public:
  SentencePieceTrainResult train(const std::unordered_map<std::string, std::string>& flags,
                                 const std::vector<std::string>& inputs) const override {
    InputLines lines(inputs);
    SentencePieceTrainResult result;
    const auto status = sentencepiece::SentencePieceTrainer::Train(flags, &lines, &result.model);
    if (!status.ok()) {
      result.model.clear();
      result.error = message_of(status);
    }
    result.unreadable_input = lines.unreadable();
    result.sentences = lines.sentences();
    return result;
  }

  std::unique_ptr<SentencePieceHandle> load(const std::string& serialized, std::string* error) const override {
    auto model = std::make_unique<Processor>();
    *error = message_of(model->processor.LoadFromSerializedProto(serialized));
    if (!error->empty()) return nullptr;
    return model;
  }
};

}  // namespace

}  // namespace moelab

extern "C" __attribute__((visibility("default"))) const moelab::SentencePieceBackend* moelab_sentencepiece_backend(
    int version) {
  static const moelab::Backend backend;
  return version == moelab::kSentencePieceBackendVersion ? &backend : nullptr;
}
