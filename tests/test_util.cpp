#include "test_util.h"

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

namespace moelab::testing {

TempDir::TempDir() {
  std::random_device rd;
  const auto base = std::filesystem::temp_directory_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto candidate = base / ("moelab-test-" + std::to_string(rd()));
    if (std::filesystem::create_directory(candidate)) {
      path_ = candidate.string();
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory");
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

CommandResult run_shell(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed");
  std::array<char, 4096> chunk{};
  size_t n = 0;
  while ((n = fread(chunk.data(), 1, chunk.size(), pipe)) > 0) result.output.append(chunk.data(), n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

CommandResult run_moelab(const std::string& args) {
  return run_shell(std::string("'") + moelab_executable() + "' " + args + " </dev/null");
}

// `lines` lines of 4..11 words drawn deterministically (an LCG) from a 24-word vocabulary.
namespace {

std::string made_text(uint32_t seed, int lines) {
  static const char* const kWords[] = {"a",     "b",    "c",    "the",  "lord", "said", "unto", "him",
                                       "and",   "he",   "was",  "in",   "land", "of",   "my",   "sons",
                                       "house", "went", "came", "king", "day",  "god",  "they", "it"};
  uint32_t state = seed;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return state >> 8;
  };
  std::string text;
  for (int line = 0; line < lines; ++line) {
    const int words = 4 + static_cast<int>(next() % 8);
    for (int w = 0; w < words; ++w) {
      if (w) text += ' ';
      text += kWords[next() % 24];
    }
    text += '\n';
  }
  return text;
}

}  // namespace

// A corpus directory with train/valid/test.txt (about 560 / 110 / 110 tokens).
void make_corpus(const std::string& dir) {
  std::filesystem::create_directories(dir);
  write_file(dir + "/train.txt", made_text(1, 70));
  write_file(dir + "/valid.txt", made_text(2, 14));
  write_file(dir + "/test.txt", made_text(3, 14));
}

std::vector<double> training_losses(const std::string& run_dir, const std::string& key) {
  std::vector<double> losses;
  std::istringstream in(read_file(run_dir + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto record = nlohmann::json::parse(line);
    if (record.contains("loss")) losses.push_back(record.at(key).get<double>());
  }
  return losses;
}

const std::map<std::string, std::vector<std::string>>& router_settings() {
  static const std::map<std::string, std::vector<std::string>> routers = {
      {"softmax", {"moe.balance.load=0", "moe.balance.z=0.001"}},
      {"topk", {"moe.balance.load=0"}},
      {"topk_mask", {"moe.balance.load=0", "moe.balance.switch=0.01"}},
      {"noisy_topk", {"moe.capacity_factor=1.0", "moe.capacity_drop=weight"}},
      {"switch", {"moe.k=1", "moe.balance.load=0", "moe.balance.switch=0.01", "moe.capacity_factor=1.0", "moe.jitter=0.01"}},
      {"top2_random", {"moe.balance.load=0", "moe.balance.switch=0.01"}},
      {"base", {"moe.k=1", "moe.balance.importance=0", "moe.balance.load=0"}},
      {"expert_choice", {"moe.balance.load=0", "moe.capacity_factor=1.0"}},
      {"hash", {"moe.k=1", "moe.balance.importance=0", "moe.balance.load=0"}},
      {"hierarchical", {"moe.k=1", "moe.groups=2", "moe.group_k=1"}},
      {"aux_free", {"moe.balance.importance=0", "moe.balance.load=0", "moe.bias_update_rate=0.01"}},
      {"group_limited", {"moe.groups=2", "moe.group_k=1", "moe.balance.load=0", "moe.balance.switch=0.01"}},
      {"relu", {"moe.balance.importance=0", "moe.balance.load=0", "moe.relu_l1_init=0.01"}},
  };
  return routers;
}

bool gnuplot_installed() {
  static const bool installed = std::system("command -v gnuplot >/dev/null 2>&1") == 0;
  return installed;
}

}  // namespace moelab::testing
