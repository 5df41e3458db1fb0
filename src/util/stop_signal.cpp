#include "moelab/util/stop_signal.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>

#include "moelab/util/fatal_signal.h"

namespace moelab {
namespace {

// Read by the training loop on other threads than the one the kernel picks for the handler; lock-free
// atomics are safe in a signal handler, a volatile is not across threads.
std::atomic<int> received{0};
std::atomic<int64_t> first_received_ns{0};
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free,
              "the stop flags are written in a signal handler");

int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);  // async-signal-safe (POSIX.1-2008)
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

void on_stop_signal(int signal_number) {
  const int64_t now = monotonic_ns();
  if (received.load() == 0) first_received_ns.store(now);
  int none = 0;
  if (received.compare_exchange_strong(none, signal_number)) return;
  if (now - first_received_ns.load() < static_cast<int64_t>(kStopSignalRepeatSeconds * 1e9)) return;
  // Insisted on: the default action ends the process.
  restore_default_action(signal_number);
  raise(signal_number);
}

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction action = {};
  action.sa_handler = on_stop_signal;
  // Both blocked while either is handled: a Ctrl-C and a `kill` arriving together are judged one
  // after the other, never interleaved.
  sigemptyset(&action.sa_mask);
  sigaddset(&action.sa_mask, SIGINT);
  sigaddset(&action.sa_mask, SIGTERM);
  action.sa_flags = SA_RESTART;
  for (const int signal_number : {SIGINT, SIGTERM}) sigaction(signal_number, &action, nullptr);
}

int stop_signal_received() { return received.load(); }

std::string signal_name(int signal_number) {
  if (signal_number == SIGINT) return "SIGINT";
  if (signal_number == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(signal_number);
}

void exit_by_signal(int signal_number, const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  restore_default_action(signal_number);
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, signal_number);
  sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
  raise(signal_number);
  _exit(128 + signal_number);  // not reached: the default action of SIGINT and SIGTERM ends the process
}

}  // namespace moelab
