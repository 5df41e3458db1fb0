// A polite stop: SIGINT or SIGTERM (Ctrl-C, `kill`, a batch system's preemption, the end of a
// machine's lease) asks a long job to finish what it is doing and leave its work resumable, instead
// of losing everything since its last periodic checkpoint. A second signal stops at once.
#pragma once
#include <string>

namespace moelab {

// Catches SIGINT and SIGTERM from now on: the first one only records itself (see
// stop_signal_received); the handler then steps aside, so a second one acts as it normally would.
// With restart_system_calls false a blocking call such as waitpid() returns early (EINTR) when the
// signal arrives, so a process that waits can react at once.
void install_stop_signal_handlers(bool restart_system_calls);

// The signal that asked this process to stop (SIGINT or SIGTERM), 0 if none has.
int stop_signal_received();

// "SIGINT", "SIGTERM", or "signal N".
std::string signal_name(int signal_number);

// Ends the process the way the signal would have (the parent's waitpid sees WIFSIGNALED), after
// the caller has saved what it had to.
[[noreturn]] void exit_by_signal(int signal_number);

}  // namespace moelab
