// SubwordModel over SentencePiece, which lives in a module opened at first use
// (sentencepiece_backend.h says why). CMake defines MOELAB_HAVE_SENTENCEPIECE and
// MOELAB_SENTENCEPIECE_MODULE (the module's path) for this file alone when libsentencepiece-dev is
// found; without them the file still compiles, and training or loading a model fails with a line
// saying which package to install.
#include "moelab/data/subword_model.h"

#include <dlfcn.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "moelab/data/sentencepiece_backend.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

// AddressSanitizer refuses dlopen with RTLD_DEEPBIND (the library would bypass its interceptors), so a
// sanitizer build has no SentencePiece. GCC says so with __SANITIZE_ADDRESS__, Clang with __has_feature.
#if defined(__SANITIZE_ADDRESS__)
#define MOELAB_ADDRESS_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MOELAB_ADDRESS_SANITIZER 1
#endif
#endif

namespace fs = std::filesystem;

namespace moelab {

struct SubwordModel::Impl {
  std::unique_ptr<SentencePieceHandle> handle;
  std::string bytes;
  std::string name;
};

namespace {

// The four special pieces and the first few characters must fit; SentencePiece itself reports
// anything below the data's character count, this only rejects sizes that can never work.
constexpr int64_t kMinVocabSize = 8;
// SentencePiece prints INFO and WARNING lines (every training step, "No valid symbol found") on
// stderr; its errors come back in the returned status, which becomes our one-line message.
constexpr int kSentencePieceLogLevel = 2;  // 0 INFO, 1 WARNING, 2 ERROR
// Unigram training sums its EM statistics per thread and then across threads, so the float result
// depends on the thread count: a constant one keeps the model bytes the same on every machine.
constexpr int kTrainThreads = 8;

struct LoadedBackend {
  const SentencePieceBackend* backend = nullptr;
  std::string error;  // why there is none
};

#if defined(MOELAB_HAVE_SENTENCEPIECE) && !defined(MOELAB_ADDRESS_SANITIZER)
// Where the module may be: beside the running executable (a build folder copied elsewhere), one
// folder up (the test binaries live in tests/), then where CMake built it.
std::vector<std::string> module_candidates() {
  const std::string built = MOELAB_SENTENCEPIECE_MODULE;
  const std::string file_name = fs::path(built).filename().string();
  std::vector<std::string> candidates;
  std::error_code error;
  const auto executable = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    candidates.push_back((executable.parent_path() / file_name).string());
    candidates.push_back((executable.parent_path().parent_path() / file_name).string());
  }
  candidates.push_back(built);
  return candidates;
}

LoadedBackend open_backend() {
  LoadedBackend loaded;
  for (const auto& path : module_candidates()) {
    if (!fs::exists(path)) continue;
    // RTLD_DEEPBIND: the module and libsentencepiece resolve their symbols among themselves first,
    // so SentencePiece's protobuf and LibTorch's never serve each other's calls.
    void* module = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!module) {
      loaded.error = fmt::format("cannot load the SentencePiece module {}: {}", path, dlerror());
      continue;
    }
    using Entry = const SentencePieceBackend* (*)(int);
    const auto entry = reinterpret_cast<Entry>(dlsym(module, "moelab_sentencepiece_backend"));
    loaded.backend = entry ? entry(kSentencePieceBackendVersion) : nullptr;
    if (loaded.backend) return loaded;
    loaded.error = fmt::format("the SentencePiece module {} is from another moelab build (rebuild moelab)", path);
  }
  if (loaded.error.empty())
    loaded.error =
        fmt::format("the SentencePiece module {} is missing (rebuild moelab)", MOELAB_SENTENCEPIECE_MODULE);
  return loaded;
}
#else
LoadedBackend open_backend() {
#ifdef MOELAB_HAVE_SENTENCEPIECE
  return {nullptr, "SentencePiece is not available in a sanitizer build (AddressSanitizer refuses RTLD_DEEPBIND)"};
#else
  return {nullptr, "moelab was built without SentencePiece (apt-get install libsentencepiece-dev)"};
#endif
}
#endif

// The backend, opened once per process (the module stays loaded until exit); throws the reason
// when there is none.
const SentencePieceBackend& backend() {
  static const LoadedBackend loaded = open_backend();
  if (!loaded.backend) fail("{}", loaded.error);
  return *loaded.backend;
}

void check_train_options(const SubwordTrainOptions& options) {
  if (options.inputs.empty()) fail("no input file to train a SentencePiece model on (--input)");
  for (const auto& input : options.inputs) {
    if (!fs::exists(input)) fail("SentencePiece training input {} does not exist", input);
    if (fs::is_directory(input)) fail("SentencePiece training input {} is a directory", input);
  }
  if (options.output.empty()) fail("no output file for the SentencePiece model (--out)");
  if (options.type != "bpe" && options.type != "unigram")
    fail("unknown subword model type '{}' (allowed: bpe, unigram)", options.type);
  if (options.vocab_size < kMinVocabSize || options.vocab_size > std::numeric_limits<int32_t>::max())
    fail("vocabulary size {} is out of range (at least {}: the 4 special pieces and some characters)",
         options.vocab_size, kMinVocabSize);
  if (!(options.character_coverage >= 0.98 && options.character_coverage <= 1.0))
    fail("character coverage {} is out of range (SentencePiece allows 0.98 to 1)", options.character_coverage);
  if (options.max_sentences < 0 || (options.max_sentences > 0 && options.max_sentences <= 100))
    fail("max sentences {} is out of range (0 = all, else more than 100, as SentencePiece requires)",
         options.max_sentences);
}

// The reason in one of SentencePiece's status messages, on one line and without the source
// location and failed condition it starts with ("./src/x.cc(232) [condition] reason").
std::string reason_in(const std::string& message) {
  std::string reason = message.substr(0, message.find('\n'));
  if (reason.find(".cc(") != std::string::npos) {
    const auto end_of_condition = reason.find("] ");
    reason = end_of_condition == std::string::npos ? "" : reason.substr(end_of_condition + 2);
  }
  while (!reason.empty() && std::isspace(static_cast<unsigned char>(reason.back()))) reason.pop_back();
  return reason;
}

// The number right after `marker` in `message` ("" when there is none): the sizes SentencePiece
// names in its messages, such as "... Please set it to a value <= 58."
std::string number_after(const std::string& message, const std::string& marker) {
  const auto at = message.rfind(marker);
  if (at == std::string::npos) return "";
  std::string digits;
  for (size_t i = at + marker.size(); i < message.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(message[i]))) break;
    digits += message[i];
  }
  return digits;
}

std::string join(const std::vector<std::string>& parts, const std::string& separator) {
  std::string joined;
  for (const auto& part : parts) joined += (joined.empty() ? "" : separator) + part;
  return joined;
}

[[noreturn]] void fail_training(const SubwordTrainOptions& options, const SentencePieceTrainResult& result) {
  const std::string inputs = join(options.inputs, ", ");
  if (!result.unreadable_input.empty()) fail("cannot read {}", result.unreadable_input);
  if (result.sentences == 0) fail("no sentences to train a SentencePiece model on in {}", inputs);
  if (result.error.find("Vocabulary size too high") != std::string::npos) {
    const std::string largest = number_after(result.error, "<= ");
    fail("vocabulary size {} is too large for the training data in {}{}; choose a smaller one",
         options.vocab_size, inputs, largest.empty() ? "" : " (at most " + largest + " pieces)");
  }
  if (result.error.find("Vocabulary size is smaller than required_chars") != std::string::npos) {
    const std::string needed = number_after(result.error, " vs ");
    fail("vocabulary size {} is too small for the characters of {}{}; choose a larger one or a lower "
         "character coverage", options.vocab_size, inputs,
         needed.empty() ? "" : " (they and the 4 special pieces need " + needed + ")");
  }
  fail("SentencePiece training on {} failed: {}", inputs, reason_in(result.error));
}

std::string read_model_file(const std::string& path) {
  if (!fs::exists(path)) fail("SentencePiece model {} does not exist", path);
  if (fs::is_directory(path)) fail("SentencePiece model {} is a directory", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read SentencePiece model {}", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail("cannot read SentencePiece model {}", path);
  return buffer.str();
}

// The .vocab listing beside a .model file; none for other names, so it can never replace the model.
std::string vocab_listing_path(const std::string& model_path) {
  const std::string suffix = ".model";
  if (model_path.size() <= suffix.size() ||
      model_path.compare(model_path.size() - suffix.size(), suffix.size(), suffix) != 0)
    return "";
  return model_path.substr(0, model_path.size() - suffix.size()) + ".vocab";
}

// The pieces and scores, one per line, as SentencePiece's own .vocab files list them.
std::string vocab_listing(const SentencePieceHandle& model) {
  std::string listing;
  for (int id = 0; id < model.size(); ++id) listing += fmt::format("{}\t{}\n", model.piece(id), model.score(id));
  return listing;
}

}  // namespace

bool sentencepiece_available() {
  try {
    backend();
    return true;
  } catch (const Error&) {
    return false;
  }
}

void train_subword_model(const SubwordTrainOptions& options) {
  const auto& sentencepiece = backend();
  check_train_options(options);
  const std::unordered_map<std::string, std::string> flags = {
      {"model_type", options.type},
      {"vocab_size", std::to_string(options.vocab_size)},
      {"character_coverage", fmt::format("{}", options.character_coverage)},
      {"input_sentence_size", std::to_string(options.max_sentences)},
      // Sampling uses SentencePiece's fixed seed; without shuffling it would keep only the first
      // sentences, all from the first input of a joint model.
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(kTrainThreads)},
      {"pad_id", std::to_string(SubwordModel::kPadId)},
      {"unk_id", std::to_string(SubwordModel::kUnkId)},
      {"bos_id", std::to_string(SubwordModel::kBosId)},
      {"eos_id", std::to_string(SubwordModel::kEosId)},
      {"pad_piece", "<pad>"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<s>"},
      {"eos_piece", "</s>"},
      {"minloglevel", std::to_string(kSentencePieceLogLevel)},
  };
  const auto result = sentencepiece.train(flags, options.inputs);
  if (result.model.empty()) fail_training(options, result);

  // Read the model back before writing it: one that cannot be loaded is never written.
  std::string error;
  const auto trained = sentencepiece.load(result.model, &error);
  if (!trained)
    fail("SentencePiece trained a model for {} that it cannot read back ({})", options.output, reason_in(error));
  const auto parent = fs::path(options.output).parent_path();
  std::error_code folder_error;
  if (!parent.empty()) fs::create_directories(parent, folder_error);
  if (folder_error)
    fail("cannot create the folder {} for {}: {}", parent.string(), options.output, folder_error.message());
  const std::string listing_path = vocab_listing_path(options.output);
  if (!listing_path.empty()) write_file_atomically(listing_path, vocab_listing(*trained));
  write_file_atomically(options.output, result.model);
}

SubwordModel SubwordModel::from_bytes(const std::string& serialized, const std::string& name) {
  const auto& sentencepiece = backend();
  if (serialized.empty()) fail("SentencePiece model {} is empty", name);
  auto impl = std::make_shared<Impl>();
  std::string error;
  impl->handle = sentencepiece.load(serialized, &error);
  if (!impl->handle) {
    const std::string reason = reason_in(error);
    fail("{} is not a SentencePiece model ({})", name, reason.empty() ? "its bytes do not parse as one" : reason);
  }
  const auto& m = *impl->handle;
  if (m.pad_id() != kPadId || m.unk_id() != kUnkId || m.bos_id() != kBosId || m.eos_id() != kEosId)
    fail("SentencePiece model {} has special ids pad {}, unk {}, bos {}, eos {}; moelab needs {}, {}, {}, {}: "
         "retrain it with `moelab data spm`",
         name, m.pad_id(), m.unk_id(), m.bos_id(), m.eos_id(), kPadId, kUnkId, kBosId, kEosId);
  impl->bytes = serialized;
  impl->name = name;
  return SubwordModel(std::move(impl));
}

SubwordModel SubwordModel::load(const std::string& path) {
  backend();  // "built without SentencePiece" before any complaint about the file
  return from_bytes(read_model_file(path), path);
}

SubwordModel::SubwordModel(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

const std::string& SubwordModel::bytes() const { return impl_->bytes; }

std::vector<int64_t> SubwordModel::encode(const std::string& text) const {
  std::vector<int> ids;
  const std::string error = impl_->handle->encode(text, &ids);
  if (!error.empty()) fail("cannot encode text with {}: {}", impl_->name, reason_in(error));
  return std::vector<int64_t>(ids.begin(), ids.end());
}

std::string SubwordModel::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> pieces;
  for (const int64_t id : ids) {
    if (id == kEosId) break;
    if (id == kPadId || id == kBosId) continue;
    if (id < 0 || id >= size())
      fail("token id {} is outside the vocabulary of {} ({} pieces)", id, impl_->name, size());
    pieces.push_back(static_cast<int>(id));
  }
  std::string text;
  const std::string error = impl_->handle->decode(pieces, &text);
  if (!error.empty()) fail("cannot decode ids with {}: {}", impl_->name, reason_in(error));
  return text;
}

int64_t SubwordModel::size() const { return impl_->handle->size(); }

std::string SubwordModel::name() const { return impl_->name; }

}  // namespace moelab
