// Small file helpers shared by the run directory, checkpoints and data export.
#pragma once
#include <string>

namespace moelab {

// Writes text to a temporary file beside path, syncs it to disk, renames it over path and syncs the
// directory: readers, and a process killed at any instant, see the old or the new file, never half
// of one, and a finished write survives a crash of the machine.
void write_file_atomically(const std::string& path, const std::string& text);

// "path.tmp.PID.N": a temporary name no other writer (process or thread) of path uses.
std::string unique_temp_path(const std::string& path);
// fsync of a written file; throws Error when it fails (disk full, I/O error).
void sync_file(const std::string& path);
// Renames temp over path (atomic on POSIX) and syncs path's directory so the rename itself is on disk.
void replace_file(const std::string& temp, const std::string& path);
std::string read_text_file(const std::string& path);  // throws Error when unreadable
bool file_exists(const std::string& path);

// What a shell command prints on stdout (redirect stderr in the command if wanted), trailing
// whitespace removed; empty when it cannot be run. For informational lines (git commit, machine).
std::string command_output(const std::string& shell_command);

// `text` as one word of a POSIX shell command line, whatever it holds: single-quoted, with each
// single quote written as '\''.
std::string shell_quote(const std::string& text);

// Peak resident set size of this process, in MiB.
double peak_rss_mb();

}  // namespace moelab
