// The stop-signal handler (util/stop_signal.h) and the crash reporter (util/fatal_signal.h), each in a
// forked child so this process keeps its own handlers.
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "moelab/util/fatal_signal.h"
#include "moelab/util/stop_signal.h"

using namespace moelab;

namespace {

void sleep_seconds(double seconds) {
  timespec duration{static_cast<time_t>(seconds), static_cast<long>((seconds - static_cast<time_t>(seconds)) * 1e9)};
  while (nanosleep(&duration, &duration) != 0) {
  }
}

}  // namespace

TEST(StopSignal, FirstIsRecordedRepeatsSoonAfterAreTheSameStopALaterOneEndsTheProcess) {
  const auto started = std::chrono::steady_clock::now();
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    install_stop_signal_handlers();
    if (stop_signal_received() != 0) _exit(1);
    raise(SIGTERM);
    if (stop_signal_received() != SIGTERM) _exit(2);
    // A batch system's SIGTERM and a Ctrl-C right after: one request, named by the first signal.
    raise(SIGTERM);
    raise(SIGINT);
    if (stop_signal_received() != SIGTERM) _exit(3);
    sleep_seconds(kStopSignalRepeatSeconds + 0.5);
    raise(SIGINT);  // insisted on: ends the process as SIGINT does
    _exit(4);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_FALSE(WIFEXITED(status)) << "exit status " << WEXITSTATUS(status);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGINT);
  EXPECT_GE(seconds, kStopSignalRepeatSeconds) << "a repeat within the window ended the process";
}

TEST(StopSignal, ExitBySignalEndsAsTheSignalWould) {
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    install_stop_signal_handlers();
    raise(SIGTERM);
    exit_by_signal(stop_signal_received(), "stopped");
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGTERM);
  EXPECT_EQ(signal_name(SIGTERM), "SIGTERM");
  EXPECT_EQ(signal_name(SIGINT), "SIGINT");
}

TEST(FatalSignal, ACrashPrintsItsSignalAndCallStackThenEndsAsTheSignalDoes) {
  int pipe_ends[2];
  ASSERT_EQ(pipe(pipe_ends), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    dup2(pipe_ends[1], STDERR_FILENO);
    close(pipe_ends[0]);
    install_fatal_signal_reporter();
    raise(SIGSEGV);
    _exit(1);
  }
  close(pipe_ends[1]);
  std::string report;
  char buffer[4096];
  for (ssize_t got; (got = read(pipe_ends[0], buffer, sizeof(buffer))) > 0;) report.append(buffer, static_cast<size_t>(got));
  close(pipe_ends[0]);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFSIGNALED(status)) << "status " << status << "\n" << report;
  EXPECT_EQ(WTERMSIG(status), SIGSEGV);
  EXPECT_EQ(report.rfind("moelab: fatal SIGSEGV; call stack", 0), 0u) << report;
  // Frames as module(+offset) or module(function+offset) [address], this test's binary among them.
  EXPECT_NE(report.find("moelab_tests"), std::string::npos) << report;
  EXPECT_NE(report.find("+0x"), std::string::npos) << report;
}
