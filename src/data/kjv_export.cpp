#include "moelab/data/kjv_export.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string_view>

#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/user_cache_dir.h"

namespace moelab {
namespace {

namespace fs = std::filesystem;

constexpr const char* kBibleRange = "Gen1:1-Rev22:21";
constexpr const char* kSplitFiles[3] = {"train.txt", "valid.txt", "test.txt"};

inline bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

// Characters that become tokens of their own. Apostrophes are NOT among them: in the KJV every
// apostrophe is a possessive ("LORD's", "sons'"), which stays part of its word; hyphens stay too.
inline bool is_punctuation(char c) {
  switch (c) {
    case ',': case ';': case ':': case '.': case '?': case '!': case '(': case ')': case '"':
      return true;
    default:
      return false;
  }
}

// A verse reference is one field holding a ':' and a digit, e.g. "Ge1:1", "1Chr3:4".
bool is_reference(std::string_view field) {
  if (field.find(':') == std::string_view::npos) return false;
  for (const char c : field) {
    if (std::isdigit(static_cast<unsigned char>(c))) return true;
  }
  return false;
}

bool is_executable_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// The program's path: as given when it holds a '/', else the first executable match on $PATH.
// Empty when none is found.
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return is_executable_file(program) ? program : std::string();
  const char* env_path = std::getenv("PATH");
  const std::string path_list = env_path != nullptr ? env_path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= path_list.size()) {
    size_t end = path_list.find(':', start);
    if (end == std::string::npos) end = path_list.size();
    // An empty PATH entry means the current directory.
    const std::string dir = end > start ? path_list.substr(start, end - start) : std::string(".");
    const std::string candidate = fmt::format("{}/{}", dir, program);
    if (is_executable_file(candidate)) return candidate;
    start = end + 1;
  }
  return {};
}

// First non-blank line of some program output, shortened, for a one-line error message.
std::string first_line(const std::string& text) {
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && is_space(line.back())) line.pop_back();
    if (!line.empty()) return line.size() > 200 ? line.substr(0, 200) + "..." : line;
    start = end + 1;
  }
  return "(no output)";
}

std::string home_cache_dir() {
  const auto cache = user_cache_dir();
  if (!cache) fail("cannot place the kjv corpus: set MOELAB_DATA_DIR (or XDG_CACHE_HOME or HOME)");
  return (fs::path(*cache) / "kjv").string();
}

}  // namespace

std::string tokenize_verse(const std::string& text) {
  std::string out;
  out.reserve(text.size() + text.size() / 8);
  auto separate = [&out] {
    if (!out.empty() && out.back() != ' ') out += ' ';
  };
  bool in_word = false;
  for (const char c : text) {
    if (is_space(c)) {
      in_word = false;
    } else if (is_punctuation(c)) {
      separate();
      out += c;
      in_word = false;
    } else {
      if (!in_word) separate();
      out += c;
      in_word = true;
    }
  }
  return out;
}

std::vector<KjvVerse> parse_bible_output(const std::string& output) {
  std::vector<KjvVerse> verses;
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string_view line(output.data() + start, end - start);
    start = end + 1;

    size_t p = 0;
    while (p < line.size() && is_space(line[p])) ++p;
    const size_t field_start = p;
    while (p < line.size() && !is_space(line[p])) ++p;
    const std::string_view reference = line.substr(field_start, p - field_start);
    if (!is_reference(reference)) continue;
    std::string text = tokenize_verse(std::string(line.substr(p)));
    if (text.empty()) continue;  // a bare reference carries no words
    verses.push_back({std::string(reference), std::move(text)});
  }
  if (verses.empty()) {
    fail("no verses found in the `bible` output (expected lines like \"Ge1:1 In the beginning ...\"), "
         "first line: {}", first_line(output));
  }
  return verses;
}

KjvSplit kjv_split_of(const std::string& reference) {
  uint64_t hash = 14695981039346656037ULL;  // FNV-1a 64-bit offset basis
  for (const char c : reference) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ULL;  // FNV-1a 64-bit prime
  }
  const uint64_t bucket = hash % 100;
  if (bucket < 90) return KjvSplit::kTrain;
  if (bucket < 95) return KjvSplit::kValid;
  return KjvSplit::kTest;
}

KjvExportStats export_kjv(const std::string& out_dir) {
  const char* env_program = std::getenv("MOELAB_BIBLE");
  const bool overridden = env_program != nullptr && *env_program != '\0';
  const std::string program = overridden ? env_program : "bible";
  const std::string resolved = find_program(program);
  if (resolved.empty()) {
    if (overridden) {
      fail("the `bible` program was not found (MOELAB_BIBLE={}): install the Debian package bible-kjv "
           "(apt-get install bible-kjv) or fix MOELAB_BIBLE", program);
    }
    fail("the `bible` program was not found: install the Debian package bible-kjv (apt-get install bible-kjv)");
  }

  const std::string command = shell_quote(resolved) + " -f " + shell_quote(kBibleRange) + " </dev/null 2>&1";
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) fail("cannot run {}: {}", resolved, std::strerror(errno));
  std::string output;
  std::array<char, 1 << 16> chunk{};
  size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), pipe)) > 0) output.append(chunk.data(), n);
  const int status = ::pclose(pipe);
  if (status == -1) fail("cannot run {}: {}", resolved, std::strerror(errno));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const std::string how = WIFEXITED(status) ? fmt::format("exit status {}", WEXITSTATUS(status))
                                              : fmt::format("signal {}", WTERMSIG(status));
    fail("`{} -f {}` failed with {}: {}", resolved, kBibleRange, how, first_line(output));
  }
  const std::vector<KjvVerse> verses = parse_bible_output(output);

  KjvExportStats stats;
  std::string texts[3];
  for (const auto& verse : verses) {
    const int split = static_cast<int>(kjv_split_of(verse.reference));
    texts[split] += verse.text;
    texts[split] += '\n';
    stats.verses[split] += 1;
    // tokenize_verse leaves single spaces between tokens and none at the ends.
    int64_t words = 1;
    for (const char c : verse.text) words += c == ' ' ? 1 : 0;
    stats.words[split] += words;
  }

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) {
    fail("cannot create the kjv corpus directory {}: {}", out_dir, ec ? ec.message() : "not a directory");
  }
  for (int split = 0; split < 3; ++split) {
    const fs::path final_path = fs::path(out_dir) / kSplitFiles[split];
    // The process id keeps two concurrent exports into one directory from sharing a temp file.
    const fs::path temp_path =
        fs::path(out_dir) / fmt::format("{}.{}.tmp", kSplitFiles[split], static_cast<long>(::getpid()));
    {
      std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
      out << texts[split];
      out.flush();
      if (!out) {
        fs::remove(temp_path, ec);
        fail("cannot write {}: {}", temp_path.string(), std::strerror(errno));
      }
    }
    fs::rename(temp_path, final_path, ec);
    if (ec) {
      std::error_code ignored;
      fs::remove(temp_path, ignored);
      fail("cannot rename {} to {}: {}", temp_path.string(), final_path.string(), ec.message());
    }
  }
  return stats;
}

std::string ensure_kjv_corpus() {
  std::string dir;
  if (const char* data_dir = std::getenv("MOELAB_DATA_DIR"); data_dir != nullptr && *data_dir != '\0') {
    dir = (fs::path(data_dir) / "kjv").string();
  } else {
    dir = home_cache_dir();
  }
  bool complete = true;
  for (const char* name : kSplitFiles) {
    std::error_code ec;
    if (!fs::is_regular_file(fs::path(dir) / name, ec)) complete = false;
  }
  if (!complete) export_kjv(dir);
  return dir;
}

}  // namespace moelab
