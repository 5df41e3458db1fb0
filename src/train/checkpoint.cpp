#include "moelab/train/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/serialize.h>

#include <nlohmann/json.hpp>

#include <fmt/ranges.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "moelab/device/device.h"
#include "moelab/train/factored_optimizer.h"
#include "moelab/train/optimizer_state_key.h"

#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/stream_checksum.h"

namespace moelab {

namespace {

// 2: expert-parallel runs keep their expert tensors in one shard file per rank. 1 (whole tensors
// only) is still read.
constexpr int64_t kFormatVersion = 2;
constexpr int64_t kOldestFormatVersion = 1;
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

struct FileDigest {
  uint64_t length = 0;  // bytes of archive after the header
  uint64_t digest = 0;  // their StreamChecksum
};

FileDigest write_checkpoint_file(torch::serialize::OutputArchive& archive, const std::string& path) {
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
  return {length, digest};
}

uint64_t checksum_of_rest(std::istream& in) {
  StreamChecksum checksum;
  std::vector<char> chunk(1 << 20);
  while (in) {
    in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
    checksum.update(chunk.data(), static_cast<size_t>(in.gcount()));
  }
  return checksum.digest();
}

// The length and digest of a checkpoint file whose `header` (the first `got` bytes of `file`,
// read) is moelab's and whose size and checksum agree with it; Error otherwise. Reads the file
// through (not kept).
FileDigest check_checkpoint_bytes(std::istream& file, uint64_t file_size, const char* header, size_t got,
                                  const std::string& path) {
  if (got < kHeaderBytes || std::memcmp(header, kMagic, 8) != 0)
    fail("checkpoint {} is unreadable or truncated: not a moelab checkpoint ({} bytes, no moelab header)", path,
         file_size);
  FileDigest recorded;
  std::memcpy(&recorded.length, header + 8, 8);
  std::memcpy(&recorded.digest, header + 16, 8);
  if (file_size - kHeaderBytes != recorded.length)
    fail("checkpoint {} is unreadable or truncated: it holds {} bytes of data, its header says {}", path,
         file_size - kHeaderBytes, recorded.length);
  if (checksum_of_rest(file) != recorded.digest)
    fail("checkpoint {} is unreadable or truncated: its checksum does not match (the file is damaged)", path);
  return recorded;
}

// Loads the archive of a checkpoint file once its length and checksum hold. Returns the digest its
// header records (0 for an older checkpoint without one).
uint64_t open_checkpoint_archive(const std::string& path, torch::serialize::InputArchive& archive,
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
    return 0;
  }
  const auto recorded = check_checkpoint_bytes(*file, file_size, header, got, path);
  const auto length = recorded.length;
  file->clear();
  archive.load_from(
      [file](uint64_t position, void* buffer, size_t bytes) -> size_t {
        file->clear();
        file->seekg(static_cast<std::streamoff>(kHeaderBytes + position));
        file->read(static_cast<char*>(buffer), static_cast<std::streamsize>(bytes));
        return static_cast<size_t>(file->gcount());
      },
      [length]() -> size_t { return static_cast<size_t>(length); }, device);
  return recorded.digest;
}

// check_checkpoint_bytes for a file that should be a checkpoint (an expert shard).
FileDigest check_checkpoint_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) fail("cannot read checkpoint {}", path);
  const auto file_size = static_cast<uint64_t>(file.tellg());
  file.seekg(0);
  char header[kHeaderBytes] = {};
  file.read(header, kHeaderBytes);
  return check_checkpoint_bytes(file, file_size, header, static_cast<size_t>(file.gcount()), path);
}

void check_format_version(torch::serialize::InputArchive& archive, const std::string& path) {
  c10::IValue value;
  archive.read("format_version", value);
  if (value.toInt() < kOldestFormatVersion || value.toInt() > kFormatVersion)
    fail("checkpoint {} has format version {}, this moelab reads {} to {}", path, value.toInt(), kOldestFormatVersion,
         kFormatVersion);
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

// The expert tensors of an expert-parallel run: the names of this rank's stacked expert parameters.
std::vector<std::string> expert_parameter_names(const torch::nn::Module& model, const CheckpointShards& shards) {
  std::vector<std::string> names;
  for (const auto& e : shards.expert_parameters)
    for (const auto& item : model.named_parameters())
      if (e.is_same(item.value())) names.push_back(item.key());
  return names;
}

// An expert tensor that an optimizer keeps per expert: stacked along dim 0 like its parameter.
bool stacked_like(const torch::Tensor& t, int64_t experts) { return t.defined() && t.dim() >= 1 && t.size(0) == experts; }

// For the time rank 0 writes the main file, the expert tensors (parameters and optimizer state)
// replaced by empty ones with no experts: they are in the shard files, and the main file stays the
// size of the replicated part however many experts there are.
class ExpertTensorsSetAside {
 public:
  ExpertTensorsSetAside(const CheckpointShards& shards, torch::optim::Optimizer* optimizer) {
    torch::NoGradGuard no_grad;
    for (const auto& parameter : shards.expert_parameters) {
      auto p = parameter;  // shares the variable
      parameters_.emplace_back(p, p.detach());
      p.set_data(no_experts(p.detach()));
      if (!optimizer) continue;
      for (auto* t : optimizer_state_tensors(*optimizer, parameter))
        if (stacked_like(*t, shards.local_experts)) {
          state_.emplace_back(t, *t);
          *t = no_experts(*t);
        }
    }
  }
  ~ExpertTensorsSetAside() {
    torch::NoGradGuard no_grad;
    for (auto& [p, local] : parameters_) p.set_data(local);
    for (auto& [t, local] : state_) *t = local;
  }

 private:
  // Not a narrowed view: LibTorch would save the view's whole storage.
  static torch::Tensor no_experts(const torch::Tensor& t) {
    auto shape = t.sizes().vec();
    shape[0] = 0;
    return torch::empty(shape, t.options());
  }
  std::vector<std::pair<torch::Tensor, torch::Tensor>> parameters_;
  std::vector<std::pair<torch::Tensor*, torch::Tensor>> state_;
};

// One rank's expert shard as the main file's manifest records it.
struct ShardRecord {
  std::string file;  // name in the checkpoint's directory
  int64_t first_expert = 0, experts = 0;
  FileDigest digest;
};

constexpr int64_t kShardFormatVersion = 1;
constexpr int kStateSlotOfParameter = -1;

std::string directory_of(const std::string& path) {
  const auto dir = std::filesystem::path(path).parent_path();
  return dir.empty() ? std::string(".") : dir.string();
}
std::string shard_prefix(const std::string& path) { return std::filesystem::path(path).filename().string() + ".experts-"; }
std::string shard_file_name(const std::string& path, int64_t first_expert, int64_t experts, uint64_t digest) {
  return fmt::format("{}{}-{}-{:016x}", shard_prefix(path), first_expert, experts, digest);
}

// Every rank writes its experts (parameters and optimizer state) to a file named by its content,
// "<checkpoint>.experts-<first>-<count>-<digest>": a shard saved again with the same content gets
// the same name, so rewriting it never changes a file an older checkpoint refers to.
ShardRecord write_expert_shard(const std::string& path, const torch::nn::Module& model, const CheckpointShards& shards,
                               torch::optim::Optimizer* optimizer) {
  torch::serialize::OutputArchive archive;
  archive.write("format_version", c10::IValue(kShardFormatVersion));
  archive.write("first_expert", c10::IValue(shards.first_expert));
  archive.write("experts", c10::IValue(shards.local_experts));
  auto entries = nlohmann::json::array();
  const auto names = expert_parameter_names(model, shards);
  for (size_t i = 0; i < shards.expert_parameters.size(); ++i) {
    const auto& parameter = shards.expert_parameters[i];
    auto add = [&](const torch::Tensor& t, int slot) {
      archive.write("tensor_" + std::to_string(entries.size()), t.detach());
      entries.push_back({{"name", names[i]}, {"slot", slot}});
    };
    add(parameter, kStateSlotOfParameter);
    if (!optimizer) continue;
    const auto state = optimizer_state_tensors(*optimizer, parameter);
    for (size_t slot = 0; slot < state.size(); ++slot)
      if (stacked_like(*state[slot], shards.local_experts)) add(*state[slot], static_cast<int>(slot));
  }
  archive.write("entries", c10::IValue(entries.dump()));
  // Ranks on other hosts may share the directory and a process id: the temporary name says whose.
  const auto temp = unique_temp_path(fmt::format("{}.experts-{}-{}-", path, shards.first_expert, shards.local_experts));
  ShardRecord record{"", shards.first_expert, shards.local_experts, {}};
  try {
    record.digest = write_checkpoint_file(archive, temp);
    sync_file(temp);
    record.file = shard_file_name(path, shards.first_expert, shards.local_experts, record.digest.digest);
    replace_file(temp, directory_of(path) + "/" + record.file);
  } catch (const std::exception& error) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    fail("cannot write the expert shard of checkpoint {}: {}", path, first_line(error));
  }
  return record;
}

// Collective: every rank's shard record, in rank order.
std::vector<ShardRecord> gather_shard_records(Communicator& communicator, const ShardRecord& mine,
                                              const std::string& path) {
  const auto as_signed = [](uint64_t v) { int64_t out; std::memcpy(&out, &v, 8); return out; };
  const auto as_unsigned = [](int64_t v) { uint64_t out; std::memcpy(&out, &v, 8); return out; };
  const auto row = torch::tensor({mine.first_expert, mine.experts, as_signed(mine.digest.length),
                                  as_signed(mine.digest.digest)}, torch::kInt64).view({1, 4});
  const auto all = all_gather_cat(communicator, row, 0);
  std::vector<ShardRecord> records;
  for (int64_t r = 0; r < all.size(0); ++r) {
    ShardRecord record{"", all[r][0].item<int64_t>(), all[r][1].item<int64_t>(),
                       {as_unsigned(all[r][2].item<int64_t>()), as_unsigned(all[r][3].item<int64_t>())}};
    record.file = shard_file_name(path, record.first_expert, record.experts, record.digest.digest);
    records.push_back(record);
  }
  return records;
}

std::string manifest_json(const torch::nn::Module& model, const CheckpointShards* shards,
                          const std::vector<ShardRecord>& shard_records) {
  nlohmann::json manifest = {{"format", 2},
                             {"saved_by_ranks", shards && shards->communicator ? shards->communicator->world_size() : 1},
                             {"parallel", shards ? shards->parallel : std::string("data")},
                             {"experts", shards ? shards->num_experts : 0},
                             {"expert_dim", 0},
                             {"batch_columns", shards ? shards->num_columns : 0}};
  manifest["expert_parameters"] = shards ? expert_parameter_names(model, *shards) : std::vector<std::string>();
  // Where the expert tensors are when they are not in this file: one shard per rank.
  auto records = nlohmann::json::array();
  for (const auto& r : shard_records)
    records.push_back({{"file", r.file},
                       {"first_expert", r.first_expert},
                       {"experts", r.experts},
                       {"bytes", r.digest.length},
                       {"digest", fmt::format("{:016x}", r.digest.digest)}});
  manifest["expert_shards"] = records;
  // Parameters the run keeps fixed (train.freeze, frozen embeddings): they have no optimizer state.
  auto frozen = nlohmann::json::array();
  for (const auto& item : model.named_parameters())
    if (!item.value().requires_grad()) frozen.push_back(item.key());
  manifest["frozen_parameters"] = frozen;
  return manifest.dump();
}

// The shard records of a main file's manifest (none for a checkpoint holding whole tensors).
std::vector<ShardRecord> shard_records_of(const nlohmann::json& manifest, const std::string& path) {
  std::vector<ShardRecord> records;
  if (!manifest.contains("expert_shards")) return records;
  try {
    for (const auto& r : manifest.at("expert_shards")) {
      ShardRecord record{r.at("file").get<std::string>(), r.at("first_expert").get<int64_t>(),
                         r.at("experts").get<int64_t>(), {r.at("bytes").get<uint64_t>(), 0}};
      record.digest.digest = std::stoull(r.at("digest").get<std::string>(), nullptr, 16);
      // A name in the checkpoint's own directory (the main file may be read under its .prev name).
      if (record.file.find('/') != std::string::npos || record.file.find(".experts-") == std::string::npos)
        fail("names a shard file '{}' that is not a shard of a checkpoint in its directory", record.file);
      records.push_back(record);
    }
  } catch (const Error& error) {
    fail("checkpoint {}: its manifest {}", path, error.what());
  } catch (const std::exception& error) {
    fail("checkpoint {}: its manifest's expert shard list is malformed: {}", path, first_line(error));
  }
  return records;
}

nlohmann::json read_manifest(torch::serialize::InputArchive& archive, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read("manifest", value) || !value.isString()) return nlohmann::json::object();
  try {
    return nlohmann::json::parse(value.toStringRef());
  } catch (const std::exception& error) {
    fail("checkpoint {}: its manifest is not JSON: {}", path, first_line(error));
  }
}

// Each shard file of `path` is there, whole and undamaged, and the one the manifest recorded. Reads
// every shard through once (not kept), so that a damaged shard makes find_checkpoint fall back.
void check_shard_files(const std::string& path, const std::vector<ShardRecord>& records) {
  for (const auto& r : records) {
    const auto file = directory_of(path) + "/" + r.file;
    if (!file_exists(file)) fail("checkpoint {}: its expert shard {} is missing", path, file);
    FileDigest found;
    try {
      found = check_checkpoint_file(file);
    } catch (const Error& error) {
      fail("checkpoint {}: its expert shard {} is truncated or damaged ({})", path, file, error.what());
    }
    if (found.length != r.digest.length || found.digest != r.digest.digest)
      fail("checkpoint {}: its expert shard {} is not the one it was saved with", path, file);
  }
}

// After a save: shard files of `path` that neither it nor its previous checkpoint refers to (left
// by older saves, or by a save killed before its main file was renamed into place) are removed.
void remove_unreferenced_shards(const std::string& path, const std::vector<ShardRecord>& current);

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
  std::vector<ShardRecord> shard_records;
  std::optional<ExpertTensorsSetAside> set_aside;
  if (is_distributed(shards)) {
    for (auto& t : state.tensors)
      if (t.defined()) t = all_gather_cat(*shards->communicator, t.detach(), 1);
    if (experts_sharded(shards)) {
      // Every rank's shard is on disk before rank 0 writes the main file that names them all.
      const auto mine = write_expert_shard(path, model, *shards, optimizer);
      shard_records = gather_shard_records(*shards->communicator, mine, path);
    }
    if (shards->communicator->rank() != 0) return;
    if (experts_sharded(shards)) set_aside.emplace(*shards, optimizer);
  }
  torch::serialize::OutputArchive archive;
  archive.write("manifest", c10::IValue(manifest_json(model, shards, shard_records)));
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
  write_archive_keeping_previous(archive, path);  // with the expert tensors still set aside: the archive holds the parameters themselves
  remove_unreferenced_shards(path, shard_records);
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
    check_format_version(archive, path);
    archive.read("step", value);
    meta.step = value.toInt();
    archive.read("config", value);
    meta.config_toml = value.toStringRef();
    archive.read("vocabulary", value);
    meta.vocabulary_text = value.toStringRef();
    check_shard_files(path, shard_records_of(read_manifest(archive, path), path));
  });
  return meta;
}

namespace {

// Where this process's experts are among all of them, and which tensors are expert tensors.
struct ExpertRange {
  int64_t first = 0, count = 0, total = 0;
};

// This process's rows [range.first, range.first + range.count) of every expert tensor in the shard
// files, by (parameter name, optimizer state slot). Reads only the shards that overlap the range.
std::map<std::pair<std::string, int>, torch::Tensor> read_expert_rows(const std::string& path,
                                                                      const std::vector<ShardRecord>& records,
                                                                      const ExpertRange& range,
                                                                      c10::optional<torch::Device> device) {
  int64_t covered = 0;
  for (const auto& r : records) {
    if (r.first_expert != covered || r.experts < 1)
      fail("checkpoint {}: its expert shards do not cover experts 0 to {} in order", path, range.total - 1);
    covered += r.experts;
  }
  if (covered != range.total)
    fail("checkpoint {}: its expert shards hold {} experts, the model has {}", path, covered, range.total);
  std::map<std::pair<std::string, int>, std::vector<torch::Tensor>> pieces;
  for (const auto& r : records) {
    const int64_t begin = std::max(range.first, r.first_expert);
    const int64_t end = std::min(range.first + range.count, r.first_expert + r.experts);
    if (begin >= end) continue;
    const auto file = directory_of(path) + "/" + r.file;
    torch::serialize::InputArchive archive;
    const auto digest = open_checkpoint_archive(file, archive, device);
    if (digest != r.digest.digest) fail("checkpoint {}: its expert shard {} is not the one it was saved with", path, file);
    c10::IValue value;
    archive.read("format_version", value);
    if (value.toInt() != kShardFormatVersion)
      fail("checkpoint {}: its expert shard {} has format version {}, this moelab reads {}", path, file, value.toInt(),
           kShardFormatVersion);
    archive.read("entries", value);
    const auto entries = nlohmann::json::parse(value.toStringRef());
    for (size_t j = 0; j < entries.size(); ++j) {
      torch::Tensor t;
      archive.read("tensor_" + std::to_string(j), t);
      if (t.dim() < 1 || t.size(0) != r.experts)
        fail("checkpoint {}: its expert shard {} holds a tensor of {} experts, not {}", path, file,
             t.dim() < 1 ? 0 : t.size(0), r.experts);
      pieces[{entries[j].at("name").get<std::string>(), entries[j].at("slot").get<int>()}].push_back(
          t.narrow(0, begin - r.first_expert, end - begin));
    }
  }
  std::map<std::pair<std::string, int>, torch::Tensor> rows;
  for (auto& [key, parts] : pieces) rows[key] = parts.size() == 1 ? parts[0].clone() : torch::cat(parts, 0);
  return rows;
}

}  // namespace

void load_checkpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                     LstmState* state, bool restore_rng, const CheckpointShards* shards) {
  const bool loader_sharded = experts_sharded(shards);
  std::set<std::string> loader_experts;
  if (shards)
    for (const auto& name : expert_parameter_names(model, *shards)) loader_experts.insert(name);
  with_readable_errors(path, [&] {
    // Every tensor is read onto the model's device, whatever device wrote it: a run trained on a GPU
    // evaluates or resumes on the CPU, and the reverse.
    const auto device = module_device(model);
    torch::serialize::InputArchive archive;
    open_checkpoint_archive(path, archive, device);
    check_format_version(archive, path);
    const auto manifest = read_manifest(archive, path);
    const auto records = shard_records_of(manifest, path);
    std::set<std::string> sharded_names;  // expert tensors that are in the shard files, not in this one
    if (!records.empty())
      for (const auto& name : manifest.value("expert_parameters", nlohmann::json::array()))
        sharded_names.insert(name.get<std::string>());

    // This process's experts: its rank's share, or all of them in one process.
    ExpertRange range;
    const auto parameters = model.named_parameters();
    if (loader_sharded) {
      range = {shards->first_expert, shards->local_experts, shards->num_experts};
    } else {
      for (const auto& name : sharded_names)
        if (const auto* p = parameters.find(name)) range = {0, p->size(0), p->size(0)};
    }

    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    // LibTorch's load replaces each tensor with whatever the file holds, shape included: every
    // parameter and buffer is checked against the model it was meant for, before the load, so a
    // refused checkpoint leaves the model as it was. An expert tensor is in this file with no experts
    // (they are in the shards) or whole (all experts along dim 0).
    std::map<std::string, std::vector<int64_t>> wanted;
    for (const auto& item : parameters) {
      auto shape = item.value().sizes().vec();
      if (sharded_names.count(item.key())) shape[0] = 0;
      else if (loader_sharded && loader_experts.count(item.key())) shape[0] = shards->num_experts;
      wanted[item.key()] = shape;
    }
    for (const auto& item : model.named_buffers()) wanted[item.key()] = item.value().sizes().vec();
    for (const auto& [name, want] : wanted) {
      const auto shape = archived_shape(model_archive, name);
      if (shape && *shape != want)
        fail("checkpoint {}: tensor {} has shape [{}], the model expects [{}] (written for another model?)", path,
             name, fmt::join(*shape, ", "), fmt::join(want, ", "));
    }
    auto expert_rows = records.empty() ? std::map<std::pair<std::string, int>, torch::Tensor>()
                                       : read_expert_rows(path, records, range, device);
    for (const auto& name : sharded_names) {
      const auto* p = parameters.find(name);
      const auto found = expert_rows.find({name, kStateSlotOfParameter});
      if (!p || found == expert_rows.end() || found->second.sizes() != p->sizes())
        fail("checkpoint {}: its expert shards do not hold {} for experts {} to {} in the model's shape", path, name,
             range.first, range.first + range.count - 1);
    }

    model.load(model_archive);
    // A checkpoint without optimizer state (an upcycled run at step 0) leaves the optimizer fresh.
    torch::serialize::InputArchive optimizer_archive;
    if (optimizer && archive.try_read("optimizer", optimizer_archive)) optimizer->load(optimizer_archive);

    // The expert tensors: this process's rows, from the shards or from the whole tensors just read.
    torch::NoGradGuard no_grad;
    for (const auto& item : parameters) {
      auto p = item.value();
      const bool from_shards = sharded_names.count(item.key()) > 0;
      if (!from_shards && !(loader_sharded && loader_experts.count(item.key()))) continue;
      p.set_data(from_shards ? expert_rows.at({item.key(), kStateSlotOfParameter})
                             : p.detach().narrow(0, range.first, range.count).clone());
      if (!optimizer) continue;
      const auto slots = optimizer_state_tensors(*optimizer, p);
      for (size_t slot = 0; slot < slots.size(); ++slot) {
        auto* t = slots[slot];
        if (from_shards) {
          const auto rows = expert_rows.find({item.key(), static_cast<int>(slot)});
          if (rows == expert_rows.end()) continue;
          if (rows->second.size(0) != range.count)
            fail("checkpoint {}: its expert shards hold optimizer state of {} experts for {}, not {}", path,
                 rows->second.size(0), item.key(), range.count);
          *t = rows->second;
        } else if (stacked_like(*t, range.total)) {
          *t = t->narrow(0, range.first, range.count).clone();
        }
      }
    }

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
  // Keep this rank's batch columns of the LSTM state.
  if (state && shards->local_columns > 0 && shards->local_columns < shards->num_columns)
    for (auto& t : state->tensors)
      if (t.defined()) {
        if (t.size(1) != shards->num_columns)
          fail("checkpoint {} carries an LSTM state of {} batch columns, the run has {}", path, t.size(1),
               shards->num_columns);
        t = t.narrow(1, shards->first_column, shards->local_columns).clone();
      }
}

namespace {

void remove_unreferenced_shards(const std::string& path, const std::vector<ShardRecord>& current) {
  namespace fs = std::filesystem;
  std::set<std::string> keep;
  for (const auto& r : current) keep.insert(r.file);
  const auto prefix = shard_prefix(path);
  std::vector<fs::path> candidates;
  std::error_code ignored;
  for (const auto& entry : fs::directory_iterator(directory_of(path), ignored)) {
    const auto name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && !keep.count(name)) candidates.push_back(entry.path());
  }
  if (candidates.empty()) return;  // the common case: no need to read the previous checkpoint
  const auto previous = previous_checkpoint_path(path);
  if (file_exists(previous)) {
    try {
      torch::serialize::InputArchive archive;
      open_checkpoint_archive(previous, archive, torch::Device(torch::kCPU));
      for (const auto& r : shard_records_of(read_manifest(archive, previous), previous)) keep.insert(r.file);
    } catch (const Error&) {
      // Damaged or not a checkpoint: no use as a fallback, its shards may go.
    } catch (const std::exception&) {
      return;  // out of memory, I/O error: the previous checkpoint may be fine, keep everything
    }
  }
  for (const auto& candidate : candidates)
    if (!keep.count(candidate.filename().string())) fs::remove(candidate, ignored);
}

}  // namespace

}  // namespace moelab
