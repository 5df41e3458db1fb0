#include "moelab/train/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace moelab {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

Progress::Progress(int64_t first_step, int64_t total_steps, int64_t log_every, bool quiet)
    : first_step_(first_step),
      total_steps_(total_steps),
      log_every_(log_every),
      quiet_(quiet),
      terminal_(isatty(STDERR_FILENO) != 0 && !quiet),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

void Progress::update(int64_t step, double tokens_per_s, double loss, double aux_loss) {
  if (quiet_) return;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const int64_t done = step - first_step_;
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_steps_ - step) : NAN;
  const std::string figures =
      fmt::format("step {}/{}  {:.0f} tok/s  loss {:.3f}{}  aux {:.3g}  ETA {}", step, total_steps_, tokens_per_s,
                  loss, show_perplexity_ ? fmt::format("  ppl {:.1f}", std::exp(loss)) : "", aux_loss,
                  format_duration(eta));
  if (terminal_) {
    if (step != total_steps_ && std::chrono::duration<double>(now - last_draw_).count() < 0.25) return;
    last_draw_ = now;
    constexpr int kBarWidth = 24;
    const int filled = static_cast<int>(kBarWidth * static_cast<double>(step) / static_cast<double>(total_steps_));
    std::fprintf(stderr, "\r[%s%s] %s\x1b[K", std::string(filled, '#').c_str(),
                 std::string(kBarWidth - filled, '.').c_str(), figures.c_str());
    std::fflush(stderr);
    bar_shown_ = true;
  } else if (step % log_every_ == 0 || step == total_steps_) {
    std::fprintf(stderr, "moelab: %s\n", figures.c_str());
  }
}

void Progress::message(const std::string& line) {
  if (quiet_) return;
  if (bar_shown_) std::fprintf(stderr, "\r\x1b[K");
  std::fprintf(stderr, "moelab: %s\n", line.c_str());
  bar_shown_ = false;
}

void Progress::finish() {
  if (bar_shown_) std::fprintf(stderr, "\n");
  bar_shown_ = false;
}

}  // namespace moelab
