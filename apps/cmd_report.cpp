// `moelab report SWEEP_DIR|RUN_DIR [--out DIR]`
#include <fmt/format.h>

#include "commands.h"
#include "moelab/report/report.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"

namespace moelab::cli {

namespace {

// `moelab info --system` of this very binary, for the report's reproducibility section.
std::string machine_description() { return command_output(shell_quote(this_executable()) + " info --system 2>&1"); }

}  // namespace

void add_report_command(CLI::App& app) {
  auto options = std::make_shared<ReportOptions>();
  auto* cmd = app.add_subcommand("report", "Tables (markdown, CSV, JSON) and gnuplot PNG plots of a sweep or a run");
  cmd->add_option("dir", options->input_dir, "Sweep directory (sweep.json) or run directory")->required();
  cmd->add_option("--out", options->out_dir, "Where report.md, results.* and plots/ go (default: the input directory)");
  cmd->callback([options] {
    options->machine = machine_description();
    options->command = "moelab report " + options->input_dir + (options->out_dir.empty() ? "" : " --out " + options->out_dir);
    const auto path = write_report(*options);
    fmt::print("wrote {}\n", path);
  });
}

}  // namespace moelab::cli
