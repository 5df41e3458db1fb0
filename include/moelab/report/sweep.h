// Sweeps: every (config, grid point, seed) of an experiment as one run directory, trained by child
// `moelab train` processes so that one crashing or diverging run cannot take the others down.
//
// A sweep is described either on the command line (--config, --grid, --seeds, --set) or by a study
// file (configs/studies/*.toml, see parse_study_file). Both expand to the same list of SweepRun, and
// SWEEP_DIR/sweep.json records that list with each run's status, so `moelab report` and a repeated
// `moelab sweep` (which skips finished runs and resumes killed ones) know what belongs to the sweep.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "moelab/config/config.h"

namespace moelab {

// One axis of a grid: a config key and the values it takes ("moe.experts", {"4", "16"}).
struct GridAxis {
  std::string key;
  std::vector<std::string> values;
};

// The step between two runs of a study that continues a trained model (sparse upcycling, MPO
// experts from a pre-trained FFN): `moelab upcycle` on the finished source run, then training on.
struct UpcycleStep {
  std::string from;  // a variant (SweepVariant) or the source run's directory (SweepRun)
  int64_t experts = 0;
  std::string bank = "ffn";
  // SweepRun only: the upcycled config's overrides (variant, grid point, --set, seed, scale);
  // a SweepVariant's own are its `overrides`.
  std::vector<std::string> overrides;
};

// A named variant: a config file (empty = built-in defaults) plus overrides, or an upcycling of
// another variant's trained runs (no config file of its own then: it starts from the source's).
struct SweepVariant {
  std::string name;
  std::string config_file;
  std::vector<std::string> overrides;  // "section.key=value"
  std::optional<UpcycleStep> upcycle;
  // The variant the report compares this one with ("" = the study's first variant, "none" = no
  // comparison): an upcycled model's fair baseline is the dense model trained on as many tokens,
  // not the first variant; a dense LSTM beside Transformers has none.
  std::string baseline;
};

struct SweepSpec {
  std::string study;        // study name ("" for a command-line sweep)
  std::string title;        // one line for the report
  std::string description;  // a paragraph for the report
  std::vector<SweepVariant> variants;
  std::vector<GridAxis> grid;  // crossed with every variant
  // Applied to every run in this order: base_overrides (a study's own `set`), then the variant's,
  // the grid point's, and last `overrides` (the command line's --set, which wins over all).
  std::vector<std::string> base_overrides;
  std::vector<std::string> overrides;
  int64_t seeds = 3;                   // runs use train.seed = 1 .. seeds
  // Keys multiplied by scale^exponent after all overrides (study files' [study.scale]).
  std::vector<std::pair<std::string, double>> scale_exponents;
  double scale = 1.0;
  // The variants keep_variants left out: their runs are not trained, but the baselines a sweep
  // records for their earlier entries come from the study as it reads now.
  std::vector<SweepVariant> left_out;
};

struct SweepRun {
  std::string variant;  // variant name plus grid point, readable ("noisy_topk__moe.experts=16")
  int64_t seed = 1;
  std::string directory;  // relative to the sweep directory: VARIANT/seedN
  // What `moelab train` gets: the config file and everything passed as --set, train.seed included.
  // For an upcycled run these describe its source run, and upcycle->overrides the new config.
  std::string config_file;
  std::vector<std::string> overrides;
  std::optional<UpcycleStep> upcycle;  // from = the source run's directory (same grid point, seed)
  std::string baseline;  // the baseline variant's run name at the same grid point, "" or "none"
};

// The config a run trains with: its file and overrides, upcycled where the run is.
Config sweep_run_config(const SweepRun& run);

// "moe.experts=4,16,64" -> {"moe.experts", {"4", "16", "64"}}; throws Error on a malformed axis.
GridAxis parse_grid_axis(const std::string& text);

// A variant per config file, named after the file's stem.
SweepSpec sweep_from_configs(const std::vector<std::string>& config_files);

// A study file:
//   [study]   name, title, description, seeds, set = ["key=value", ...], base = "file.toml"
//   [study.scale]  "train.steps" = 1.0, "model.hidden" = 0.5   (exponent of --scale per key)
//   [grid]    "moe.experts" = [4, 16]
//   [[variant]]  name, config (optional, else base), set = [...]
//   [[variant]]  name, upcycle = { from = "dense", experts = 8, bank = "mpo" }, set = [...]
//                (each seed's finished `from` run upcycled, `set` applied to the new config, then
//                trained for its train.steps; `from` is a variant that is not upcycled itself)
// Paths are relative to the study file. `scale` multiplies each listed key of every run by
// scale^exponent (integers rounded), after all overrides: the same study on a bigger machine.
SweepSpec parse_study_file(const std::string& path, double scale = 1.0);

// Every run of the spec, variants x grid points x seeds, in a stable order. Checks that every
// resulting config parses and validates, so a bad variant fails before anything trains.
std::vector<SweepRun> expand_sweep(const SweepSpec& spec);

// Keeps the variants matching one of `patterns` (a name, or a prefix ending in '*'), in the spec's
// order, so part of a study can run now and the rest later into the same sweep directory; the
// source of a kept upcycled variant is kept too (its finished runs are skipped). Throws Error when
// a pattern matches no variant.
void keep_variants(SweepSpec& spec, const std::vector<std::string>& patterns);

// The order a sweep starts the runs it still has to train (indices into `runs`): those that can
// resume from a checkpoint first, so an interrupted sweep finishes what it began before it starts
// anything new; then seed by seed, so every variant's first seed (a first comparison) is done before
// any variant's second; within a seed, the spec's order.
std::vector<size_t> sweep_start_order(const std::vector<SweepRun>& runs, const std::vector<size_t>& pending,
                                      const std::vector<bool>& resumable);

// A run directory name part: keeps [A-Za-z0-9._=+-], maps everything else to '_'.
std::string readable_name(const std::string& text);

struct SweepOptions {
  std::string moelab_executable;  // the binary that trains each run
  std::string out_dir;
  int64_t jobs = 1;     // runs side by side; each gets cores / jobs threads
  int64_t cores = 0;    // 0 = the machine's
  std::string command;  // the command line that started the sweep, for the report
  bool quiet = false;
};

struct SweepOutcome {
  int64_t finished = 0;  // done in this invocation
  int64_t skipped = 0;   // already finished before
  int64_t failed = 0;
  int64_t interrupted = 0;  // ended by SIGINT / SIGTERM; the next invocation resumes them
  int stopped_by_signal = 0;  // SIGINT / SIGTERM when the sweep was asked to stop (its runs checkpointed)
};

// Trains every run not yet finished (resuming those with a checkpoint), `jobs` at a time, and keeps
// SWEEP_DIR/sweep.json up to date. An upcycled run starts once its source run has finished (the
// `moelab upcycle` output goes to its train.log) and fails when the source failed. A failed run is
// recorded with the last line of its error output (also in its train.log) and the sweep goes on.
// When stop_signal_received() (util/stop_signal.h) turns non-zero, the sweep starts nothing more,
// sends each running run SIGTERM (moelab train then checkpoints and stops) and returns once they
// have exited. Any run that ends by SIGINT or SIGTERM, whoever sent it, is recorded "interrupted",
// not failed. Runs get SIGTERM too when the sweep process dies or throws.
SweepOutcome run_sweep(const SweepSpec& spec, const SweepOptions& options);

// Reads SWEEP_DIR/sweep.json; throws Error if absent or unreadable.
nlohmann::json read_sweep_manifest(const std::string& sweep_dir);

}  // namespace moelab
