// Small file helpers shared by the run directory, checkpoints and data export.
#pragma once
#include <string>

namespace moelab {

// Writes text to path.tmp, flushes, then renames over path: readers see the old or the new file,
// never half of one.
void write_file_atomically(const std::string& path, const std::string& text);
std::string read_text_file(const std::string& path);  // throws Error when unreadable
bool file_exists(const std::string& path);

// What a shell command prints on stdout (redirect stderr in the command if wanted), trailing
// whitespace removed; empty when it cannot be run. For informational lines (git commit, machine).
std::string command_output(const std::string& shell_command);

// Peak resident set size of this process, in MiB.
double peak_rss_mb();

}  // namespace moelab
