// Training progress for people: a one-line bar redrawn in place on a terminal (step, tokens/s, loss,
// perplexity, ETA), or plain periodic log lines when stderr is not a terminal (CI, files).
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace moelab {

class Progress {
 public:
  Progress(int64_t first_step, int64_t total_steps, int64_t log_every, bool quiet);
  // Called after every step with the running means since the last report.
  void update(int64_t step, double tokens_per_s, double loss, double aux_loss);
  void message(const std::string& line);  // a log line that does not break the bar
  // Language models show exp(loss) too; other tasks' losses are not perplexities.
  void show_perplexity(bool show) { show_perplexity_ = show; }
  void finish();

 private:
  int64_t first_step_;
  int64_t total_steps_;
  int64_t log_every_;
  bool quiet_;
  bool terminal_;
  bool bar_shown_ = false;
  bool show_perplexity_ = true;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

std::string format_duration(double seconds);  // "1h02m", "3m05s", "12s"

}  // namespace moelab
