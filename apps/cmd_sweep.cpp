// `moelab sweep (--study FILE [--scale X] | --config A.toml ... [--grid key=v1,v2 ...] [--seeds N])
//               [--set key=value ...] [--variants NAME,PREFIX*] --out SWEEP_DIR [--jobs N] [--cores C]`
#include <unistd.h>

#include <fmt/format.h>

#include <climits>

#include "commands.h"
#include "moelab/report/sweep.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/stop_signal.h"

namespace moelab::cli {

namespace {

struct SweepArgs {
  std::string study_file;
  double scale = 1.0;
  std::vector<std::string> config_files;
  std::vector<std::string> grid;
  std::vector<std::string> overrides;
  std::vector<std::string> variants;  // empty: all
  int64_t seeds = 0;  // 0 = the study's, or 3
  std::string out_dir;
  int64_t jobs = 1;
  int64_t cores = 0;  // 0 = the machine's
  bool quiet = false;
  bool dry_run = false;
};

// This process's command line as a shell would take it back (for the report).
std::string sweep_command_line() {
  const auto raw = read_text_file("/proc/self/cmdline");
  std::string line, arg;
  auto flush = [&] {
    const bool plain = !arg.empty() && arg.find_first_of(" '\"$\\*?") == std::string::npos;
    line += (line.empty() ? "" : " ") + (plain ? arg : "'" + arg + "'");
    arg.clear();
  };
  for (const char c : raw) {
    if (c == '\0') flush();
    else arg += c;
  }
  if (!arg.empty()) flush();
  const auto first_space = line.find(' ');
  return "moelab" + (first_space == std::string::npos ? std::string() : line.substr(first_space));
}

}  // namespace

std::string this_executable() {
  char buffer[PATH_MAX];
  const auto n = readlink("/proc/self/exe", buffer, sizeof buffer - 1);
  if (n <= 0) fail("cannot find the moelab executable (/proc/self/exe)");
  return std::string(buffer, static_cast<size_t>(n));
}

void add_sweep_command(CLI::App& app) {
  auto args = std::make_shared<SweepArgs>();
  auto* cmd = app.add_subcommand("sweep", "Train configs x grid points x seeds, one run directory each (resumable)");
  cmd->add_option("--study", args->study_file, "Study file (configs/studies/*.toml): variants, grid, seeds");
  cmd->add_option("--scale", args->scale, "Multiply the study's scaled keys (steps, widths) for bigger machines");
  cmd->add_option("--config", args->config_files, "A config to sweep (repeatable); one variant each");
  cmd->add_option("--grid", args->grid, "section.key=v1,v2,... crossed with every variant (repeatable)");
  cmd->add_option("--set", args->overrides, "section.key=value applied to every run (repeatable)");
  cmd->add_option("--variants", args->variants, "Only these variants (comma-separated; 'prefix*' for a prefix)")
      ->delimiter(',');
  cmd->add_option("--seeds", args->seeds, "Seeds per variant (train.seed = 1..N); default: the study's, else 3");
  cmd->add_option("--out", args->out_dir, "Sweep directory")->required();
  cmd->add_option("--jobs", args->jobs, "Runs side by side; the cores are split between them");
  cmd->add_option("--cores", args->cores,
                  "Cores this sweep may use (default: all), so that two sweeps can share a machine");
  cmd->add_flag("--quiet", args->quiet, "Only errors");
  cmd->add_flag("--dry-run", args->dry_run, "List the runs and exit");
  cmd->callback([args] {
    if (!args->study_file.empty() && !args->config_files.empty()) fail("give either --study or --config, not both");
    SweepSpec spec = args->study_file.empty() ? sweep_from_configs(args->config_files)
                                              : parse_study_file(args->study_file, args->scale);
    if (args->study_file.empty() && args->scale != 1.0) fail("--scale applies to --study only");
    for (const auto& axis : args->grid) spec.grid.push_back(parse_grid_axis(axis));
    spec.overrides.insert(spec.overrides.end(), args->overrides.begin(), args->overrides.end());
    if (!args->variants.empty()) keep_variants(spec, args->variants);
    if (args->seeds != 0) spec.seeds = args->seeds;
    if (args->dry_run) {
      for (const auto& run : expand_sweep(spec)) {
        std::string line = run.directory + ":";
        if (run.upcycle) {
          line += fmt::format(" upcycle --from {} --experts {} --bank {}", run.upcycle->from, run.upcycle->experts,
                              run.upcycle->bank);
          for (const auto& assignment : run.upcycle->overrides) line += " --set " + assignment;
          line += ", then train --resume";
        } else {
          if (!run.config_file.empty()) line += " --config " + run.config_file;
          for (const auto& assignment : run.overrides) line += " --set " + assignment;
        }
        fmt::print("{}\n", line);
      }
      return;
    }
    SweepOptions options;
    options.moelab_executable = this_executable();
    options.out_dir = args->out_dir;
    options.jobs = args->jobs;
    options.cores = args->cores;
    options.quiet = args->quiet;
    options.command = sweep_command_line();
    install_stop_signal_handlers();
    const auto outcome = run_sweep(spec, options);
    if (outcome.stopped_by_signal != 0) {
      exit_by_signal(outcome.stopped_by_signal,
                     fmt::format("moelab: sweep stopped by {}; its runs kept their checkpoints (run the same "
                                 "command to resume)",
                                 signal_name(outcome.stopped_by_signal)));
    }
    if (outcome.failed > 0)
      fail("{} of the sweep's runs failed (their errors are in {}/sweep.json and each run's train.log)",
           outcome.failed, args->out_dir);
  });
}

}  // namespace moelab::cli
