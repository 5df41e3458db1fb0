// Shared helpers for the test suite: temporary directories, files, running the CLI.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "moelab/util/files.h"

namespace moelab::testing {

// This build's paths (generated/test_paths.cpp): the moelab executable the CLI tests run, the
// multi-process tests' worker, and the checkout (configs, fixtures, scripts).
std::string moelab_executable();
std::string dist_worker_executable();
std::string source_dir();

// A fresh directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

// A made-up corpus directory with train/valid/test.txt (about 560 / 110 / 110 tokens of a 24-word
// vocabulary, deterministic).
void make_corpus(const std::string& dir);

// The training loss of every logged step of the run in `run_dir` (its metrics.jsonl), in order.
std::vector<double> training_losses(const std::string& run_dir, const std::string& key = "loss");

// `text` as one shell word, for the command lines the CLI tests build.
inline std::string sq(const std::string& text) { return shell_quote(text); }

// Config overrides that make each router valid in a model of 4 experts with k = 2 (and exercise its
// typical balancing loss and capacity setting), keyed by router name: one entry per router.
const std::map<std::string, std::vector<std::string>>& router_settings();

// `moelab report` draws with gnuplot, which the scripts install; machines without it (a GPU
// machine's image) skip the tests that make reports, with this reason.
bool gnuplot_installed();
#define MOELAB_SKIP_WITHOUT_GNUPLOT() \
  if (!::moelab::testing::gnuplot_installed()) GTEST_SKIP() << "gnuplot is not installed (apt-get install gnuplot-nox)"

// Runs the moelab executable with the given argument string (shell syntax) and captures output.
CommandResult run_moelab(const std::string& args);
// Runs any shell command and captures output.
CommandResult run_shell(const std::string& command);

}  // namespace moelab::testing
