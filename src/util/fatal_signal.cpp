#include "moelab/util/fatal_signal.h"

#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

namespace moelab {
namespace {

constexpr int kFatalSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

void write_text(const char* text) {
  const ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
  (void)ignored;
}

void report_and_end(int signal_number) {
  // Only async-signal-safe calls from here on: the heap may be what broke.
  write_text("moelab: fatal ");
  const char* name = signal_number == SIGSEGV   ? "SIGSEGV"
                     : signal_number == SIGBUS  ? "SIGBUS"
                     : signal_number == SIGFPE  ? "SIGFPE"
                     : signal_number == SIGILL  ? "SIGILL"
                     : signal_number == SIGABRT ? "SIGABRT"
                                                : "signal";
  write_text(name);
  write_text("; call stack (addr2line -f -C -e MODULE OFFSET names a frame):\n");
  void* frames[64];
  const int count = backtrace(frames, 64);
  backtrace_symbols_fd(frames, count, STDERR_FILENO);
  restore_default_action(signal_number);  // the default ends it, with a core dump where enabled
  raise(signal_number);
}

}  // namespace

void restore_default_action(int signal_number) {
  struct sigaction action = {};
  action.sa_handler = SIG_DFL;
  sigemptyset(&action.sa_mask);
  sigaction(signal_number, &action, nullptr);
}

void install_fatal_signal_reporter() {
  // backtrace() loads libgcc on its first call, which allocates: done now, not in the handler.
  void* warm_up[1];
  backtrace(warm_up, 1);
  // Its own stack: a stack overflow's SIGSEGV arrives with no room left on the thread's stack.
  static char alternate_stack[1 << 16];
  stack_t stack = {};
  stack.ss_sp = alternate_stack;
  stack.ss_size = sizeof(alternate_stack);
  sigaltstack(&stack, nullptr);
  struct sigaction action = {};
  action.sa_handler = report_and_end;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_ONSTACK;
  for (const int signal_number : kFatalSignals) sigaction(signal_number, &action, nullptr);
}

}  // namespace moelab
