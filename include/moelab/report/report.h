// `moelab report`: report.md, results.csv, results.json and the PNG plots of a sweep or a run.
#pragma once
#include <string>

namespace moelab {

struct ReportOptions {
  std::string input_dir;  // SWEEP_DIR or RUN_DIR
  std::string out_dir;    // default: input_dir
  std::string machine;    // `moelab info --system` text, for reproducibility
  std::string command;    // the report command line
};

// Returns the path of report.md. Throws Error when the input holds no finished run.
std::string write_report(const ReportOptions& options);

}  // namespace moelab
