// A polite stop: SIGINT or SIGTERM (Ctrl-C, `kill`, a batch system's preemption, the end of a
// machine's lease) asks a long job to finish what it is doing and leave its work resumable, instead
// of losing everything since its last periodic checkpoint. A second signal stops at once.
#pragma once
#include <string>

namespace moelab {

// Catches SIGINT and SIGTERM from now on: the first one only records itself (see
// stop_signal_received); the handler then steps aside, so a second one acts as it normally would.
// Interrupted system calls restart, so file writes in progress are not cut short.
void install_stop_signal_handlers();

// The signal that asked this process to stop (SIGINT or SIGTERM), 0 if none has.
int stop_signal_received();

// "SIGINT", "SIGTERM", or "signal N".
std::string signal_name(int signal_number);

// Prints `message` (one line, to stderr) and ends the process the way the signal would have (the
// parent's waitpid sees WIFSIGNALED, a shell reports 128 + N), after the caller has saved what it
// had to.
[[noreturn]] void exit_by_signal(int signal_number, const std::string& message);

}  // namespace moelab
