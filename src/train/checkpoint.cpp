#include "moelab/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <nlohmann/json.hpp>

#include <fmt/ranges.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>

#include "moelab/device/device.h"
#include "moelab/train/factored_optimizer.h"
#include "moelab/train/optimizer_state_key.h"

#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/stream_checksum.h"

namespace moelab {

namespace {

constexpr int64_t kFormatVersion = 1;
constexpr int kStateSlots = 4;

// torch::serialize reports errors with multi-line backtraces; keep a one-line reason.
template <typename Fn>
void with_readable_errors(const std::string& path, Fn&& fn) {
  if (!std::filesystem::exists(path)) fail("checkpoint {} does not exist", path);
  try {
    fn();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& error) {
    fail("checkpoint {} is unreadable or truncated: {}", path, first_line(error));
  }
}

// The file around LibTorch's archive: "MOELABCK", the archive's length and its checksum (8 bytes
// each, little-endian), then the archive. The length and checksum are checked before LibTorch sees
// a byte, so a truncated or damaged file is refused in one line (LibTorch's own reader does not
// check tensor data, and a damaged archive can crash its TorchScript parser).
constexpr char kMagic[8] = {'M', 'O', 'E', 'L', 'A', 'B', 'C', 'K'};
constexpr size_t kHeaderBytes = 24;
constexpr const char* kAllowUnchecked = "MOELAB_ALLOW_UNCHECKED_CHECKPOINTS";

void write_checkpoint_file(torch::serialize::OutputArchive& archive, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write {}", path);
  char header[kHeaderBytes] = {};
  out.write(header, kHeaderBytes);
  StreamChecksum checksum;
  uint64_t length = 0;
  archive.save_to([&](const void* data, size_t size) -> size_t {
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    checksum.update(data, size);
    length += size;
    return out ? size : 0;
  });
  const uint64_t digest = checksum.digest();
  std::memcpy(header, kMagic, 8);
  std::memcpy(header + 8, &length, 8);
  std::memcpy(header + 16, &digest, 8);
  out.seekp(0);
  out.write(header, kHeaderBytes);
  out.flush();
  if (!out) fail("cannot write {} (disk full?)", path);
}

// Loads the archive of a checkpoint file once its length and checksum hold.
void open_checkpoint_archive(const std::string& path, torch::serialize::InputArchive& archive,
                             c10::optional<torch::Device> device) {
  auto file = std::make_shared<std::ifstream>(path, std::ios::binary | std::ios::ate);
  if (!*file) fail("cannot read checkpoint {}", path);
  // The size of the file opened, not of whatever the path names a moment later (a run saving).
  const auto file_size = static_cast<uint64_t>(file->tellg());
  file->seekg(0);
  char header[kHeaderBytes] = {};
  file->read(header, kHeaderBytes);
  const auto got = static_cast<size_t>(file->gcount());
  if (got >= 4 && std::memcmp(header, "PK\x03\x04", 4) == 0) {
    // A checkpoint of moelab before the checksum: readable on request.
    if (!std::getenv(kAllowUnchecked))
      fail("checkpoint {} was written by an older moelab, without a checksum; set {}=1 to read it anyway", path,
           kAllowUnchecked);
    file.reset();
    archive.load_from(path, device);
    return;
  }
  if (got < kHeaderBytes || std::memcmp(header, kMagic, 8) != 0)
    fail("checkpoint {} is unreadable or truncated: not a moelab checkpoint ({} bytes, no moelab header)", path,
         file_size);
  uint64_t length = 0, expected = 0;
  std::memcpy(&length, header + 8, 8);
  std::memcpy(&expected, header + 16, 8);
  if (file_size - kHeaderBytes != length)
    fail("checkpoint {} is unreadable or truncated: it holds {} bytes of data, its header says {}", path,
         file_size - kHeaderBytes, length);
  StreamChecksum checksum;
  std::vector<char> chunk(1 << 20);
  while (*file) {
    file->read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    checksum.update(chunk.data(), static_cast<size_t>(file->gcount()));
  }
  if (checksum.digest() != expected)
    fail("checkpoint {} is unreadable or truncated: its checksum does not match (the file is damaged)", path);
  file->clear();
  archive.load_from(
      [file](uint64_t position, void* buffer, size_t bytes) -> size_t {
        file->clear();
        file->seekg(static_cast<std::streamoff>(kHeaderBytes + position));
        file->read(static_cast<char*>(buffer), static_cast<std::streamsize>(bytes));
        return static_cast<size_t>(file->gcount());
      },
      [length]() -> size_t { return static_cast<size_t>(length); }, device);
}

// The tensors an optimizer keeps for one parameter (empty before its first step).
std::vector<torch::Tensor*> optimizer_state_tensors(torch::optim::Optimizer& optimizer, const torch::Tensor& parameter) {
  for (auto& [key, state] : optimizer.state()) {
    if (key != optimizer_state_key(parameter)) continue;
    auto* base = state.get();
    if (auto* s = dynamic_cast<torch::optim::AdamParamState*>(base))
      return {&s->exp_avg(), &s->exp_avg_sq(), &s->max_exp_avg_sq()};
    if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(base))
      return {&s->exp_avg(), &s->exp_avg_sq(), &s->max_exp_avg_sq()};
    if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(base)) return {&s->momentum_buffer()};
    if (auto* s = dynamic_cast<torch::optim::AdagradParamState*>(base)) return {&s->sum()};
    if (auto* s = dynamic_cast<FactoredParamState*>(base)) return {&s->row(), &s->col(), &s->full(), &s->steps()};
    fail("checkpoints of expert-parallel runs know the state of adam, adamw, sgd, adagrad and factored; not this optimizer's");
  }
  return {};
}

bool is_distributed(const CheckpointShards* shards) {
  return shards && shards->communicator && shards->communicator->world_size() > 1;
}
bool experts_sharded(const CheckpointShards* shards) {
  return shards && shards->local_experts > 0 && shards->local_experts < shards->num_experts;
}

// For the time of a save, the expert tensors of every rank gathered into whole ones, and back.
class WholeExpertTensors {
 public:
  WholeExpertTensors(const CheckpointShards& shards, torch::optim::Optimizer* optimizer) {
    auto& communicator = *shards.communicator;
    torch::NoGradGuard no_grad;
    for (const auto& parameter : shards.expert_parameters) {
      auto p = parameter;  // shares the variable
      local_parameters_.emplace_back(p, p.detach());
      p.set_data(all_gather_cat(communicator, p.detach(), 0));
      if (!optimizer) continue;
      for (auto* t : optimizer_state_tensors(*optimizer, parameter))
        if (t->defined() && t->dim() >= 1 && t->size(0) == shards.local_experts) {
          local_state_.emplace_back(t, *t);
          *t = all_gather_cat(communicator, *t, 0);
        }
    }
  }
  ~WholeExpertTensors() {
    torch::NoGradGuard no_grad;
    for (auto& [p, local] : local_parameters_) p.set_data(local);
    for (auto& [t, local] : local_state_) *t = local;
  }

 private:
  std::vector<std::pair<torch::Tensor, torch::Tensor>> local_parameters_;
  std::vector<std::pair<torch::Tensor*, torch::Tensor>> local_state_;
};

std::string manifest_json(const torch::nn::Module& model, const CheckpointShards* shards) {
  nlohmann::json manifest = {{"format", 1},
                             {"saved_by_ranks", shards && shards->communicator ? shards->communicator->world_size() : 1},
                             {"parallel", shards ? shards->parallel : std::string("data")},
                             {"experts", shards ? shards->num_experts : 0},
                             {"expert_dim", 0},
                             {"batch_columns", shards ? shards->num_columns : 0}};
  auto names = nlohmann::json::array();
  if (shards)
    for (const auto& item : model.named_parameters())
      for (const auto& e : shards->expert_parameters)
        if (e.is_same(item.value())) names.push_back(item.key());
  manifest["expert_parameters"] = names;
  // Parameters the run keeps fixed (train.freeze, frozen embeddings): they have no optimizer state.
  auto frozen = nlohmann::json::array();
  for (const auto& item : model.named_parameters())
    if (!item.value().requires_grad()) frozen.push_back(item.key());
  manifest["frozen_parameters"] = frozen;
  return manifest.dump();
}

// Every parameter's and buffer's shape by name; with `shards` of an expert-parallel run, the shape of
// the whole tensor a checkpoint stores (all experts along dim 0) for this rank's expert tensors.
std::map<std::string, std::vector<int64_t>> tensor_shapes(const torch::nn::Module& model,
                                                          const CheckpointShards* shards) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& item : model.named_parameters()) {
    auto shape = item.value().sizes().vec();
    if (experts_sharded(shards))
      for (const auto& e : shards->expert_parameters)
        if (e.is_same(item.value())) shape[0] = shards->num_experts;
    shapes[item.key()] = shape;
  }
  for (const auto& item : model.named_buffers()) shapes[item.key()] = item.value().sizes().vec();
  return shapes;
}

// Writes the archive so that at every instant `path` is a complete checkpoint (once one exists) and
// `path.prev` the one before it: the new file is written under a unique name and synced; the current
// one gets a second name (a hard link, so nothing is copied) that replaces the old .prev; then the
// new file is renamed over `path`. A kill at any point leaves both names readable.
void write_archive_keeping_previous(torch::serialize::OutputArchive& archive, const std::string& path) {
  namespace fs = std::filesystem;
  // Temporary files of writers killed earlier, of the checkpoint and of its .prev name (one writer
  // per run directory at a time).
  const auto name = fs::path(path).filename().string();
  const auto previous_name = fs::path(previous_checkpoint_path(path)).filename().string();
  const auto dir = fs::path(path).parent_path().empty() ? fs::path(".") : fs::path(path).parent_path();
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator(dir, ignored)) {
    const auto file = entry.path().filename().string();
    if (file.rfind(name + ".tmp.", 0) == 0 || file.rfind(previous_name + ".tmp.", 0) == 0) fs::remove(entry.path(), ignored);
  }

  const auto temp = unique_temp_path(path);
  try {
    write_checkpoint_file(archive, temp);
    sync_file(temp);
  } catch (const std::exception& error) {
    fs::remove(temp, ignored);
    fail("cannot write checkpoint {}: {}", path, first_line(error));
  }
  if (file_exists(path)) {
    const auto previous = previous_checkpoint_path(path);
    const auto previous_temp = unique_temp_path(previous);
    std::error_code error;
    fs::create_hard_link(path, previous_temp, error);
    if (error) {  // a filesystem without hard links: a synced copy instead
      error.clear();
      fs::copy_file(path, previous_temp, fs::copy_options::overwrite_existing, error);
      if (!error) sync_file(previous_temp);
    }
    if (!error) replace_file(previous_temp, previous);
    // After a kill between the two renames both names are one file, and renaming one name of a file
    // over another does nothing (POSIX): the temporary name would stay.
    fs::remove(previous_temp, ignored);
  }
  replace_file(temp, path);
}

// The shape of the tensor `dotted_name` ("layer.sub.weight") in a module's archive, which nests one
// archive per submodule; nullopt when absent (Module::load then names it).
std::optional<std::vector<int64_t>> archived_shape(torch::serialize::InputArchive& archive,
                                                   const std::string& dotted_name) {
  const auto dot = dotted_name.find('.');
  if (dot == std::string::npos) {
    torch::Tensor tensor;
    if (!archive.try_read(dotted_name, tensor, /*is_buffer=*/false) &&
        !archive.try_read(dotted_name, tensor, /*is_buffer=*/true))
      return std::nullopt;
    return tensor.sizes().vec();
  }
  torch::serialize::InputArchive sub;
  if (!archive.try_read(dotted_name.substr(0, dot), sub)) return std::nullopt;
  return archived_shape(sub, dotted_name.substr(dot + 1));
}

}  // namespace

void save_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     const LstmState& local_state, const CheckpointMeta& meta, const CheckpointShards* shards) {
  LstmState state = local_state;
  std::optional<WholeExpertTensors> whole;
  if (is_distributed(shards)) {
    for (auto& t : state.tensors)
      if (t.defined()) t = all_gather_cat(*shards->communicator, t.detach(), 1);
    if (experts_sharded(shards)) whole.emplace(*shards, optimizer);
    if (shards->communicator->rank() != 0) return;
  }
  torch::serialize::OutputArchive archive;
  archive.write("manifest", c10::IValue(manifest_json(model, shards)));
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
  // The GPU's generator too (dropout masks and router noise drawn there), for the device the
  // model trains on.
  const auto device = module_device(model);
  if (device.is_cuda()) {
    auto generator = at::globalContext().defaultGenerator(device);
    std::lock_guard<std::mutex> lock(generator.mutex());
    archive.write("rng_cuda", generator.get_state());
  }
  write_archive_keeping_previous(archive, path);
}

std::string previous_checkpoint_path(const std::string& path) { return path + ".prev"; }

bool checkpoint_exists(const std::string& path) {
  return file_exists(path) || file_exists(previous_checkpoint_path(path));
}

std::optional<FoundCheckpoint> find_checkpoint(const std::string& path) {
  const auto previous = previous_checkpoint_path(path);
  if (!file_exists(path) && !file_exists(previous)) return std::nullopt;
  std::string problem;
  try {
    return FoundCheckpoint{path, read_checkpoint_meta(path)};
  } catch (const Error& error) {
    problem = error.what();
  }
  if (!file_exists(previous)) fail("{}", problem);
  CheckpointMeta meta;
  try {
    meta = read_checkpoint_meta(previous);
  } catch (const Error& error) {
    fail("{}; the previous one is unusable too: {}", problem, error.what());
  }
  fmt::print(stderr, "moelab: warning: {}; using the previous checkpoint {} (step {})\n", problem, previous, meta.step);
  return FoundCheckpoint{previous, meta};
}

CheckpointMeta read_checkpoint_meta(const std::string& path) {
  CheckpointMeta meta;
  with_readable_errors(path, [&] {
    torch::serialize::InputArchive archive;
    open_checkpoint_archive(path, archive, c10::nullopt);
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
                     LstmState* state, bool restore_rng, const CheckpointShards* shards) {
  with_readable_errors(path, [&] {
    // Every tensor is read onto the model's device, whatever device wrote it: a run trained on a GPU
    // evaluates or resumes on the CPU, and the reverse.
    const auto device = module_device(model);
    torch::serialize::InputArchive archive;
    open_checkpoint_archive(path, archive, device);
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    // LibTorch's load replaces each tensor with whatever the file holds, shape included: every
    // parameter and buffer is checked against the model it was meant for (expert tensors of a
    // sharded run come whole, all experts along dim 0), before the load, so a refused checkpoint
    // leaves the model as it was.
    for (const auto& [name, want] : tensor_shapes(model, shards)) {
      const auto shape = archived_shape(model_archive, name);
      if (shape && *shape != want)
        fail("checkpoint {}: tensor {} has shape [{}], the model expects [{}] (written for another model?)", path,
             name, fmt::join(*shape, ", "), fmt::join(want, ", "));
    }
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
      generator.set_state(rng.to(torch::kCPU));  // a generator's state is a CPU byte tensor
      // A run moved between CPU and GPU keeps what it can: the GPU generator's state only when it
      // was saved and the model is on a GPU now.
      torch::Tensor rng_cuda;
      if (device.is_cuda() && archive.try_read("rng_cuda", rng_cuda)) {
        auto cuda_generator = at::globalContext().defaultGenerator(device);
        std::lock_guard<std::mutex> cuda_lock(cuda_generator.mutex());
        cuda_generator.set_state(rng_cuda.to(torch::kCPU));
      }
    }
  });
  if (!shards) return;
  // Keep this rank's part of the whole tensors just read.
  torch::NoGradGuard no_grad;
  if (experts_sharded(shards))
    for (const auto& parameter : shards->expert_parameters) {  // whole: the shape check above saw num_experts
      auto p = parameter;
      p.set_data(p.detach().narrow(0, shards->first_expert, shards->local_experts).clone());
      if (optimizer)
        for (auto* t : optimizer_state_tensors(*optimizer, parameter))
          if (t->defined() && t->dim() >= 1 && t->size(0) == shards->num_experts)
            *t = t->narrow(0, shards->first_expert, shards->local_experts).clone();
    }
  if (state && shards->local_columns > 0 && shards->local_columns < shards->num_columns)
    for (auto& t : state->tensors)
      if (t.defined()) {
        if (t.size(1) != shards->num_columns)
          fail("checkpoint {} carries an LSTM state of {} batch columns, the run has {}", path, t.size(1),
               shards->num_columns);
        t = t.narrow(1, shards->first_column, shards->local_columns).clone();
      }
}

}  // namespace moelab
