#include "moelab/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/serialize.h>

#include <filesystem>

#include "moelab/util/error.h"

namespace moelab {

namespace {

constexpr int64_t kFormatVersion = 1;
constexpr int kStateSlots = 4;

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// torch::serialize reports errors with multi-line backtraces; keep a one-line reason.
template <typename Fn>
void with_readable_errors(const std::string& path, Fn&& fn) {
  if (!std::filesystem::exists(path)) fail("checkpoint {} does not exist", path);
  try {
    fn();
  } catch (const Error&) {
    throw;
  } catch (const c10::Error& error) {
    fail("checkpoint {} is unreadable or truncated: {}", path, first_line(error.what_without_backtrace()));
  } catch (const std::exception& error) {
    fail("checkpoint {} is unreadable or truncated: {}", path, first_line(error.what()));
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::nn::Module& model, const torch::optim::Optimizer* optimizer,
                     const LstmState& state, const CheckpointMeta& meta) {
  torch::serialize::OutputArchive archive;
  archive.write("format_version", c10::IValue(kFormatVersion));
  archive.write("step", c10::IValue(meta.step));
  archive.write("config", c10::IValue(meta.config_toml));
  archive.write("vocabulary", c10::IValue(meta.vocabulary_text));
  torch::serialize::OutputArchive model_archive;
  model.save(model_archive);
  archive.write("model", model_archive);
  if (optimizer) {
    torch::serialize::OutputArchive optimizer_archive;
    optimizer->save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
  }
  for (int i = 0; i < kStateSlots; ++i) {
    const bool present = i < static_cast<int>(state.tensors.size()) && state.tensors[i].defined();
    if (present) archive.write("lstm_state_" + std::to_string(i), state.tensors[i].detach());
  }
  {
    auto generator = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(generator.mutex());
    archive.write("rng_cpu", generator.get_state());
  }
  const std::string temp = path + ".tmp";
  archive.save_to(temp);
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) fail("cannot rename {} to {}: {}", temp, path, error.message());
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  CheckpointMeta meta;
  with_readable_errors(path, [&] {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    c10::IValue value;
    archive.read("format_version", value);
    if (value.toInt() != kFormatVersion)
      fail("checkpoint {} has format version {}, this moelab reads {}", path, value.toInt(), kFormatVersion);
    archive.read("step", value);
    meta.step = value.toInt();
    archive.read("config", value);
    meta.config_toml = value.toStringRef();
    archive.read("vocabulary", value);
    meta.vocabulary_text = value.toStringRef();
  });
  return meta;
}

void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     LstmState* state, bool restore_rng) {
  with_readable_errors(path, [&] {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    model.load(model_archive);
    // A checkpoint without optimizer state (an upcycled run at step 0) leaves the optimizer fresh.
    torch::serialize::InputArchive optimizer_archive;
    if (optimizer && archive.try_read("optimizer", optimizer_archive)) optimizer->load(optimizer_archive);
    if (state) {
      state->tensors.assign(kStateSlots, torch::Tensor());
      for (int i = 0; i < kStateSlots; ++i) {
        torch::Tensor t;
        if (archive.try_read("lstm_state_" + std::to_string(i), t)) state->tensors[i] = t;
      }
    }
    if (restore_rng) {
      torch::Tensor rng;
      archive.read("rng_cpu", rng);
      auto generator = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_state(rng);
    }
  });
}

}  // namespace moelab
