#include "moelab/util/stop_signal.h"

#include <signal.h>
#include <cstdio>
#include <unistd.h>

namespace moelab {
namespace {

volatile sig_atomic_t received = 0;

void record(int signal_number) { received = signal_number; }

}  // namespace

void install_stop_signal_handlers() {
  struct sigaction action = {};
  action.sa_handler = record;
  sigemptyset(&action.sa_mask);
  // SA_RESETHAND: after the first signal the default action is back, so a second one ends the
  // process even if it is stuck.
  action.sa_flags = SA_RESETHAND | SA_RESTART;
  for (const int signal_number : {SIGINT, SIGTERM}) sigaction(signal_number, &action, nullptr);
}

int stop_signal_received() { return received; }

std::string signal_name(int signal_number) {
  if (signal_number == SIGINT) return "SIGINT";
  if (signal_number == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(signal_number);
}

void exit_by_signal(int signal_number, const std::string& message) {
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
  struct sigaction action = {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  sigaction(signal_number, &action, nullptr);
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, signal_number);
  sigprocmask(SIG_UNBLOCK, &unblock, nullptr);
  raise(signal_number);
  _exit(128 + signal_number);  // not reached: the default action of SIGINT and SIGTERM ends the process
}

}  // namespace moelab
