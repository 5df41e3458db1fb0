#include "moelab/dispatch/grouped_path_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>

#include "moelab/device/device.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/user_cache_dir.h"

namespace moelab {

namespace {

std::mutex g_cache_mutex;  // guards g_cache_file and serialises this process's threads on the file
std::string g_cache_file;

void warn(const std::string& what) { fmt::print(stderr, "moelab: warning: grouped-path cache: {}\n", what); }

// An exclusive flock on "<cache>.lock", released when destroyed (or when the process dies).
class CacheLock {
 public:
  explicit CacheLock(const std::string& cache) {
    const auto lock_path = cache + ".lock";
    fd_ = ::open(lock_path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd_ < 0) return;
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) {
        ::close(fd_);
        fd_ = -1;
        return;
      }
  }
  ~CacheLock() {
    if (fd_ >= 0) ::close(fd_);  // closing releases the lock
  }
  CacheLock(const CacheLock&) = delete;
  CacheLock& operator=(const CacheLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

nlohmann::json read_cache(const std::string& file) {
  if (!file_exists(file)) return nlohmann::json::object();
  try {
    auto json = nlohmann::json::parse(read_text_file(file));
    if (json.is_object() && json.value("version", 0) == 1 && json.contains("machines") &&
        json["machines"].is_object())
      return json;
    warn(file + " is not a cache of version 1; measuring again and writing it anew");
  } catch (const std::exception& e) {
    warn(file + " is unreadable (" + std::string(e.what()) + "); measuring again and writing it anew");
  }
  return nlohmann::json::object();
}

// The saved path for `key`, if it is one of `candidates` and the saved measurement timed every one of
// them (a choice saved before a candidate existed is measured again, so a new path gets its chance).
std::optional<GroupedPath> saved_path(const nlohmann::json& cache, const std::string& machine, const std::string& key,
                                      const std::vector<GroupedPath>& candidates) {
  if (!cache.contains("machines") || !cache["machines"].contains(machine)) return std::nullopt;
  const auto& shapes = cache["machines"][machine];
  if (!shapes.is_object() || !shapes.contains(key) || !shapes[key].is_object()) return std::nullopt;
  const auto& entry = shapes[key];
  if (!entry.contains("path") || !entry["path"].is_string()) return std::nullopt;
  const auto measured = entry.value("measured_ms", nlohmann::json::object());
  for (auto candidate : candidates)
    if (!measured.is_object() || !measured.contains(grouped_path_name(candidate))) return std::nullopt;
  try {
    const auto path = parse_grouped_path(entry["path"].get<std::string>());
    if (std::find(candidates.begin(), candidates.end(), path) == candidates.end()) return std::nullopt;
    return path;
  } catch (const Error&) {
    return std::nullopt;  // a path of a newer moelab: measure
  }
}

}  // namespace

void set_grouped_path_cache(const std::string& file) {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  g_cache_file = file;
}

std::string grouped_path_cache() {
  std::lock_guard<std::mutex> lock(g_cache_mutex);
  return g_cache_file;
}

std::string default_grouped_path_cache() {
  std::string dir;
  if (const char* own = std::getenv("MOELAB_CACHE_DIR"); own != nullptr && *own != '\0') dir = own;
  else dir = user_cache_dir().value_or(std::filesystem::temp_directory_path().string() + "/moelab-cache");
  return dir + "/grouped_paths.json";
}

std::string grouped_path_machine(int device_type) {
  const auto type = static_cast<c10::DeviceType>(device_type);
  const std::string hardware = type == c10::DeviceType::CPU ? cpu_model_name() : c10::DeviceTypeName(type, true);
  return fmt::format("{} | {} threads | {}", hardware, at::get_num_threads(), libtorch_description());
}

GroupedChoice saved_or_measured_choice(const GroupedShape& shape, const std::function<GroupedChoice()>& measure,
                                       const std::vector<GroupedPath>& candidates) {
  const auto file = grouped_path_cache();
  if (file.empty()) return measure();
  std::lock_guard<std::mutex> in_process(g_cache_mutex);
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(file).parent_path(), ignored);
  CacheLock lock(file);
  if (!lock.held()) {
    warn("cannot lock " + file + ".lock (" + std::string(std::strerror(errno)) + "); measuring without saving");
    return measure();
  }
  auto cache = read_cache(file);
  const auto machine = grouped_path_machine(shape.device_type);
  const auto key = shape.key();
  if (const auto path = saved_path(cache, machine, key, candidates)) {
    GroupedChoice choice;
    choice.shape = shape;
    choice.path = *path;
    choice.saved = true;
    return choice;
  }
  auto choice = measure();
  nlohmann::json measured = nlohmann::json::object();
  for (const auto& [path, ms] : choice.measured_ms) measured[grouped_path_name(path)] = ms;
  cache["version"] = 1;
  cache["machines"][machine][key] = {{"path", grouped_path_name(choice.path)}, {"measured_ms", measured}};
  try {
    write_file_atomically(file, cache.dump(2) + "\n");
  } catch (const std::exception& e) {
    warn("cannot write " + file + " (" + std::string(e.what()) + "); the choice holds for this process only");
  }
  return choice;
}

}  // namespace moelab
