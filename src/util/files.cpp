#include "moelab/util/files.h"

#include <sys/resource.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "moelab/util/error.h"

namespace moelab {

void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) fail("cannot write {}", temp);
    out << text;
    out.flush();
    if (!out) fail("cannot write {} (disk full?)", temp);
  }
  std::error_code error;
  std::filesystem::rename(temp, path, error);
  if (error) fail("cannot rename {} to {}: {}", temp, path, error.message());
}

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

bool file_exists(const std::string& path) { return std::filesystem::exists(path); }

std::string command_output(const std::string& shell_command) {
  std::string out;
  if (FILE* pipe = popen(shell_command.c_str(), "r")) {
    char chunk[512];
    size_t n = 0;
    while ((n = fread(chunk, 1, sizeof chunk, pipe)) > 0) out.append(chunk, n);
    pclose(pipe);
  }
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

double peak_rss_mb() {
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

}  // namespace moelab
