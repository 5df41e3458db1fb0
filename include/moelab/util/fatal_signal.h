// A crash hours into a run (a segmentation fault, a failed check's abort, glibc aborting on a
// corrupted heap) otherwise leaves one line such as "corrupted size vs. prev_size" in train.log and
// no clue where it came from. This prints the signal and the call stack first.
#pragma once

namespace moelab {

// From now on SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT print "moelab: fatal SIGxxx" and the call
// stack (frames as module(+offset): `addr2line -f -C -e MODULE OFFSET` names them) to stderr, then
// end the process as the signal does (a core dump where enabled). Runs on its own stack, so a stack
// overflow is reported too.
void install_fatal_signal_reporter();

// Gives `signal_number` its default action back (async-signal-safe): a handler that then raises the
// signal ends the process as the signal would have. The signal is blocked while its handler runs,
// so the raised copy arrives as the handler returns.
void restore_default_action(int signal_number);

}  // namespace moelab
