// A polite stop: SIGINT or SIGTERM (Ctrl-C, `kill`, a batch system's preemption, the end of a
// machine's lease) asks a long job to finish what it is doing and leave its work resumable, instead
// of losing everything since its last periodic checkpoint. A second signal, once the first has had
// time to be acted on, stops at once.
#pragma once
#include <string>

namespace moelab {

// How long after the first stop signal further ones count as the same request. A batch system that
// signals every process of a job also reaches the runs of a sweep, which passes its own SIGTERM on
// a moment later: that second copy must not kill a run while it writes its checkpoint.
constexpr double kStopSignalRepeatSeconds = 2.0;

// Catches SIGINT and SIGTERM from now on. The first one only records itself (see
// stop_signal_received); repeats within kStopSignalRepeatSeconds are ignored; a later one ends the
// process the way the signal normally would. SA_RESTART: a blocking read, write or wait under way
// when the signal arrives carries on instead of failing with EINTR, so no I/O path needs a retry.
void install_stop_signal_handlers();

// The first signal that asked this process to stop (SIGINT or SIGTERM), 0 if none has. Safe to
// read from any thread.
int stop_signal_received();

// "SIGINT", "SIGTERM", or "signal N".
std::string signal_name(int signal_number);

// Prints `message` (one line, to stderr) and ends the process the way the signal would have (the
// parent's waitpid sees WIFSIGNALED, a shell reports 128 + N), after the caller has saved what it
// had to.
[[noreturn]] void exit_by_signal(int signal_number, const std::string& message);

}  // namespace moelab
