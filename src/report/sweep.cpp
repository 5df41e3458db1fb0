#include "moelab/report/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cmath>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <toml++/toml.h>

#include "moelab/config/assignment.h"
#include "moelab/config/config.h"
#include "moelab/report/aggregate.h"
#include "moelab/train/checkpoint.h"
#include "moelab/train/run_dir.h"
#include "moelab/train/upcycle.h"
#include "moelab/util/build_commit.h"
#include "moelab/util/error.h"
#include "moelab/util/files.h"
#include "moelab/util/stop_signal.h"
#include "moelab/util/trim.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const auto end = text.find(separator, start);
    parts.push_back(trim(text.substr(start, end - start)));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

// A TOML scalar as the text `--set` would take.
std::string toml_scalar_text(const toml::node& node, const std::string& where) {
  if (const auto v = node.value<std::string>(); v && node.is_string()) return *v;
  if (node.is_integer()) return std::to_string(*node.value<int64_t>());
  if (node.is_floating_point()) return fmt::format("{}", *node.value<double>());
  if (node.is_boolean()) return *node.value<bool>() ? "true" : "false";
  fail("{}: expected a string, number or boolean", where);
}

std::vector<std::string> string_list(const toml::node* node, const std::string& where) {
  std::vector<std::string> out;
  if (!node) return out;
  const auto* array = node->as_array();
  if (!array) fail("{} must be a list of strings", where);
  for (const auto& item : *array) {
    if (!item.is_string()) fail("{} must be a list of strings", where);
    out.push_back(*item.value<std::string>());
  }
  return out;
}

std::string resolve_relative(const fs::path& base_dir, const std::string& file) {
  if (file.empty()) return file;
  const fs::path path(file);
  return path.is_absolute() ? file : (base_dir / path).lexically_normal().string();
}

std::string value_text(const Config& config, const std::string& key, double factor) {
  for (const auto& entry : Config::schema()) {
    if (entry.name != key) continue;
    if (std::holds_alternative<int64_t>(entry.default_value))
      return std::to_string(std::max<int64_t>(1, std::llround(static_cast<double>(config.get_int(key)) * factor)));
    if (std::holds_alternative<double>(entry.default_value)) return fmt::format("{}", config.get_float(key) * factor);
    fail("study scale: key {} is not a number", key);
  }
  fail("study scale: unknown key {}", key);
}

// An upcycled variant's `upcycle = { from = ..., experts = ..., bank = ... }`.
UpcycleStep parse_upcycle(const toml::node& node, const std::string& where) {
  const auto* table = node.as_table();
  if (!table) fail("{}.upcycle must be a table: {{ from = \"variant\", experts = 8, bank = \"ffn\" }}", where);
  for (const auto& [key, value] : *table) {
    const std::string name(key.str());
    if (name != "from" && name != "experts" && name != "bank")
      fail("{}: unknown upcycle key {} (known: from, experts, bank)", where, name);
  }
  UpcycleStep step;
  step.from = (*table)["from"].value_or(std::string());
  if (step.from.empty()) fail("{}.upcycle needs from = \"a variant of this study\"", where);
  const auto experts = (*table)["experts"];
  if (!experts.is_integer() || *experts.value<int64_t>() < 1) fail("{}.upcycle.experts must be an integer >= 1", where);
  step.experts = *experts.value<int64_t>();
  if (const auto bank = (*table)["bank"]) {
    if (!bank.is_string()) fail("{}.upcycle.bank must be a string (ffn, low_rank, mpo, lora, tensor_train)", where);
    step.bank = *bank.value<std::string>();
  }
  return step;
}

}  // namespace

Config sweep_run_config(const SweepRun& run) {
  Config config = run.config_file.empty() ? Config::defaults() : Config::from_toml_file(run.config_file);
  for (const auto& assignment : run.overrides) config.apply_override(assignment);
  if (!run.upcycle) return config;
  return upcycled_config(config, run.upcycle->experts, run.upcycle->bank, run.upcycle->overrides);
}

std::string readable_name(const std::string& text) {
  std::string out;
  for (const char c : text) {
    const bool keep = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '=' || c == '+' || c == '-';
    out += keep ? c : '_';
  }
  // The name is a directory under --out: "..", "." or a hidden name would leave it or hide in it.
  if (out.empty() || out.front() == '.') out.insert(out.begin(), '_');
  return out;
}

GridAxis parse_grid_axis(const std::string& text) {
  const auto equals = text.find('=');
  if (equals == std::string::npos || equals == 0)
    fail("--grid '{}' must look like section.key=value1,value2", text);
  GridAxis axis{trim(text.substr(0, equals)), split(text.substr(equals + 1), ',')};
  for (const auto& value : axis.values)
    if (value.empty()) fail("--grid '{}' has an empty value", text);
  return axis;
}

SweepSpec sweep_from_configs(const std::vector<std::string>& config_files) {
  SweepSpec spec;
  if (config_files.empty()) spec.variants.push_back({"defaults", "", {}, std::nullopt, ""});
  for (const auto& file : config_files) {
    if (!file_exists(file)) fail("config file {} does not exist", file);
    spec.variants.push_back({fs::path(file).stem().string(), file, {}, std::nullopt, ""});
  }
  return spec;
}

SweepSpec parse_study_file(const std::string& path, double scale) {
  if (!file_exists(path)) fail("study file {} does not exist", path);
  if (!(scale > 0) || !std::isfinite(scale)) fail("--scale must be a positive number, got {}", scale);
  toml::table table;
  try {
    table = toml::parse_file(path);
  } catch (const toml::parse_error& error) {
    fail("{}:{}: {}", path, error.source().begin.line, std::string(error.description()));
  }
  const fs::path dir = fs::path(path).parent_path();
  SweepSpec spec;
  spec.scale = scale;
  for (const auto& [key, node] : table) {
    const std::string name(key.str());
    if (name != "study" && name != "grid" && name != "variant") fail("{}: unknown section [{}] (known: study, grid, variant)", path, name);
  }
  const auto study = table["study"];
  if (!study.as_table()) fail("{}: missing [study] section", path);
  for (const auto& [key, node] : *study.as_table()) {
    const std::string name(key.str());
    static const std::set<std::string> known = {"name", "title", "description", "seeds", "set", "base", "scale"};
    if (!known.count(name)) fail("{}: unknown key study.{}", path, name);
  }
  spec.study = study["name"].value_or(fs::path(path).stem().string());
  spec.title = study["title"].value_or(spec.study);
  spec.description = study["description"].value_or(std::string());
  spec.seeds = study["seeds"].value_or(int64_t{3});
  spec.base_overrides = string_list(study["set"].node(), path + ": study.set");
  const std::string base = resolve_relative(dir, study["base"].value_or(std::string()));
  if (const auto* scale_table = study["scale"].as_table()) {
    for (const auto& [key, node] : *scale_table) {
      const auto exponent = node.value<double>();
      if (!exponent) fail("{}: study.scale.\"{}\" must be a number (the exponent of --scale)", path, key.str());
      spec.scale_exponents.push_back({std::string(key.str()), *exponent});
    }
  }
  if (const auto* grid = table["grid"].as_table()) {
    for (const auto& [key, node] : *grid) {
      GridAxis axis{std::string(key.str()), {}};
      const auto* values = node.as_array();
      if (!values || values->empty()) fail("{}: grid.\"{}\" must be a non-empty list", path, axis.key);
      for (const auto& value : *values) axis.values.push_back(toml_scalar_text(value, path + ": grid." + axis.key));
      spec.grid.push_back(axis);
    }
  }
  const auto* variants = table["variant"].as_array();
  if (!variants || variants->empty()) fail("{}: a study needs at least one [[variant]]", path);
  for (const auto& node : *variants) {
    const auto* v = node.as_table();
    if (!v) fail("{}: [[variant]] entries must be tables", path);
    for (const auto& [key, value] : *v) {
      const std::string name(key.str());
      if (name != "name" && name != "config" && name != "set" && name != "upcycle" && name != "baseline")
        fail("{}: unknown variant key {} (known: name, config, set, upcycle, baseline)", path, name);
    }
    SweepVariant variant;
    variant.name = (*v)["name"].value_or(std::string());
    if (variant.name.empty()) fail("{}: every [[variant]] needs a name", path);
    if (const auto* upcycle = (*v)["upcycle"].node()) {
      if ((*v)["config"])
        fail("{}: variant {} has both config and upcycle; an upcycled variant starts from its source's config", path,
             variant.name);
      variant.upcycle = parse_upcycle(*upcycle, path + ": variant " + variant.name);
    }
    variant.config_file = (*v)["config"] ? resolve_relative(dir, (*v)["config"].value_or(std::string()))
                          : variant.upcycle ? std::string()
                                            : base;
    variant.overrides = string_list((*v)["set"].node(), path + ": variant " + variant.name + ".set");
    if (const auto* baseline = (*v)["baseline"].node()) {
      if (!baseline->is_string())
        fail("{}: variant {}: baseline must be the name of another variant or \"{}\"", path, variant.name, kNoBaseline);
      variant.baseline = *baseline->value<std::string>();
    }
    if (!variant.config_file.empty() && !file_exists(variant.config_file))
      fail("{}: variant {}: config file {} does not exist", path, variant.name, variant.config_file);
    spec.variants.push_back(variant);
  }
  // Checked against every variant of the file: --variants may later keep a variant without its baseline.
  for (const auto& variant : spec.variants) {
    if (variant.name == kNoBaseline)
      fail("{}: a variant cannot be named {}: baseline = \"{}\" means no baseline", path, kNoBaseline, kNoBaseline);
    if (variant.baseline.empty() || variant.baseline == kNoBaseline) continue;
    if (variant.baseline == variant.name) fail("{}: variant {} is its own baseline", path, variant.name);
    if (std::none_of(spec.variants.begin(), spec.variants.end(),
                     [&](const SweepVariant& other) { return other.name == variant.baseline; }))
      fail("{}: variant {}: baseline = \"{}\" is not a variant of this study", path, variant.name, variant.baseline);
  }
  return spec;
}

void keep_variants(SweepSpec& spec, const std::vector<std::string>& patterns) {
  auto matches = [](const std::string& pattern, const std::string& name) {
    if (!pattern.empty() && pattern.back() == '*') return name.rfind(pattern.substr(0, pattern.size() - 1), 0) == 0;
    return name == pattern;
  };
  std::vector<std::string> names;
  for (const auto& variant : spec.variants) names.push_back(variant.name);
  for (const auto& pattern : patterns)
    if (std::none_of(names.begin(), names.end(), [&](const std::string& name) { return matches(pattern, name); }))
      fail("--variants: '{}' matches no variant (the sweep has: {})", pattern, fmt::join(names, ", "));
  std::set<std::string> keep;
  for (const auto& variant : spec.variants)
    if (std::any_of(patterns.begin(), patterns.end(),
                    [&](const std::string& pattern) { return matches(pattern, variant.name); })) {
      keep.insert(variant.name);
      if (variant.upcycle) keep.insert(variant.upcycle->from);  // its runs are what it starts from
    }
  std::vector<SweepVariant> kept;
  for (const auto& variant : spec.variants)
    (keep.count(variant.name) ? kept : spec.left_out).push_back(variant);
  spec.variants = kept;
}

std::vector<SweepRun> expand_sweep(const SweepSpec& spec) {
  if (spec.seeds < 1) fail("--seeds must be >= 1, got {}", spec.seeds);
  if (spec.variants.empty()) fail("a sweep needs at least one config or variant");
  // --set is applied after the grid, so a key in both would give every grid point the --set value.
  for (const auto& axis : spec.grid)
    for (const auto& assignment : spec.overrides)
      if (split_assignment(assignment).key == axis.key)
        fail("{} is both a --grid axis and a --set ({}); the --set would override every grid point", axis.key,
             assignment);
  // Grid points: the cross product of every axis, first axis slowest.
  std::vector<std::vector<std::string>> points = {{}};
  for (const auto& axis : spec.grid) {
    std::vector<std::vector<std::string>> next;
    for (const auto& point : points)
      for (const auto& value : axis.values) {
        auto extended = point;
        extended.push_back(axis.key + "=" + value);
        next.push_back(extended);
      }
    points = next;
  }
  std::map<std::string, const SweepVariant*> by_name;
  for (const auto& variant : spec.variants) by_name[variant.name] = &variant;
  for (const auto& variant : spec.variants) {
    if (!variant.upcycle) continue;
    const auto source = by_name.find(variant.upcycle->from);
    if (source == by_name.end())
      fail("sweep variant {}: upcycle.from = \"{}\" is not a variant of this sweep", variant.name,
           variant.upcycle->from);
    if (source->second->upcycle)
      fail("sweep variant {}: upcycle.from = \"{}\" is upcycled itself; upcycle from a variant trained from scratch",
           variant.name, variant.upcycle->from);
  }
  // "noisy_topk__moe.experts=16": the variant's name and its grid point.
  auto run_name = [](const std::string& variant_name, const std::vector<std::string>& point) {
    std::string name = variant_name;
    for (const auto& assignment : point) name += "__" + assignment;
    return readable_name(name);
  };
  // The keys of [study.scale] multiplied, each from its value in the unscaled config.
  auto scaled = [&](const Config& unscaled) {
    std::vector<std::string> assignments;
    if (spec.scale == 1.0) return assignments;
    for (const auto& [key, exponent] : spec.scale_exponents)
      assignments.push_back(key + "=" + value_text(unscaled, key, std::pow(spec.scale, exponent)));
    return assignments;
  };
  // A variant's own assignments at a grid point and seed, in the order they apply: the variant's,
  // the grid point's, the command line's, the seed.
  auto variant_overrides = [&](const SweepVariant& variant, const std::vector<std::string>& point, int64_t seed) {
    std::vector<std::string> out = variant.overrides;
    out.insert(out.end(), point.begin(), point.end());
    out.insert(out.end(), spec.overrides.begin(), spec.overrides.end());
    out.push_back("train.seed=" + std::to_string(seed));
    return out;
  };
  // The run of a variant that trains from its config file (the study's `set` first).
  auto trained_run = [&](const SweepVariant& variant, const std::vector<std::string>& point, int64_t seed) {
    SweepRun run;
    run.variant = run_name(variant.name, point);
    run.seed = seed;
    run.directory = run.variant + "/seed" + std::to_string(seed);
    run.config_file = variant.config_file;
    run.overrides = spec.base_overrides;
    const auto own = variant_overrides(variant, point, seed);
    run.overrides.insert(run.overrides.end(), own.begin(), own.end());
    for (const auto& assignment : scaled(sweep_run_config(run))) run.overrides.push_back(assignment);
    return run;
  };
  std::vector<SweepRun> runs;
  std::set<std::string> names;
  for (const auto& variant : spec.variants) {
    for (const auto& point : points) {
      const auto name = run_name(variant.name, point);
      if (!names.insert(name).second) fail("two sweep variants are both named '{}'", name);
      for (int64_t seed = 1; seed <= spec.seeds; ++seed) {
        SweepRun run;
        try {
          if (!variant.upcycle) {
            run = trained_run(variant, point, seed);
          } else {
            // The source run's file and overrides, and the step that turns its model into this one.
            run = trained_run(*by_name.at(variant.upcycle->from), point, seed);
            UpcycleStep step = *variant.upcycle;
            step.from = run.directory;
            step.overrides = variant_overrides(variant, point, seed);
            run.variant = name;
            run.directory = name + "/seed" + std::to_string(seed);
            run.upcycle = step;
            // Keys the source's config brought are scaled there already; only those this step
            // assigns anew are scaled here.
            std::set<std::string> assigned;
            for (const auto& assignment : step.overrides) assigned.insert(split_assignment(assignment).key);
            for (const auto& assignment : scaled(sweep_run_config(run)))
              if (assigned.count(split_assignment(assignment).key)) run.upcycle->overrides.push_back(assignment);
          }
          if (variant.baseline == kNoBaseline) run.baseline = kNoBaseline;
          else if (!variant.baseline.empty()) run.baseline = run_name(variant.baseline, point);
          sweep_run_config(run).validate();
        } catch (const Error& error) {
          fail("sweep variant {}: {}", name, error.what());
        }
        runs.push_back(run);
      }
    }
  }
  return runs;
}

namespace {

nlohmann::json run_to_json(const SweepRun& run) {
  nlohmann::json entry = {{"variant", run.variant},
                          {"seed", run.seed},
                          {"directory", run.directory},
                          {"config_file", run.config_file},
                          {"overrides", run.overrides},
                          {"status", "pending"}};
  if (run.upcycle)
    entry["upcycle"] = {{"from", run.upcycle->from},
                        {"experts", run.upcycle->experts},
                        {"bank", run.upcycle->bank},
                        {"overrides", run.upcycle->overrides}};
  if (!run.baseline.empty()) entry["baseline"] = run.baseline;
  return entry;
}

// The line a failed child left that says why: moelab's own "moelab: error:" line, else the last
// non-empty line.
std::string error_line(const std::string& log_path) {
  std::ifstream in(log_path);
  std::string line, last, error;
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty()) continue;
    last = line;
    if (line.rfind("moelab: error:", 0) == 0) error = line.substr(15);
  }
  return !error.empty() ? error : last.empty() ? "no output" : last;
}

pid_t spawn_train(const std::string& executable, const std::vector<std::string>& args, const std::string& log_path) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(executable.c_str()));
  for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  const pid_t sweep_pid = getpid();
  const pid_t pid = fork();
  if (pid < 0) fail("cannot start a training process: fork failed");
  if (pid == 0) {
    // Its own process group: Ctrl-C in a terminal reaches the sweep alone, which passes one SIGTERM
    // on and watches the run stop.
    setpgid(0, 0);
    // Outside the terminal's group the run would outlive a sweep that dies (SIGKILL, SIGHUP, a
    // crash) and train on unwatched while a rerun of the sweep starts a second trainer in the same
    // directory. Told instead, it checkpoints and stops like any stopped run.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != sweep_pid) _exit(128 + SIGTERM);  // the sweep died before the line above
    const int log = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) {
      dup2(log, STDOUT_FILENO);
      dup2(log, STDERR_FILENO);
      close(log);
    }
    const int null_in = open("/dev/null", O_RDONLY);
    if (null_in >= 0) dup2(null_in, STDIN_FILENO);
    execv(executable.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

nlohmann::json read_sweep_manifest(const std::string& sweep_dir) {
  const auto path = sweep_dir + "/sweep.json";
  if (!file_exists(path)) fail("{} is not a sweep directory (no sweep.json)", sweep_dir);
  try {
    return nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& error) {
    fail("{}: unreadable sweep manifest: {}", path, error.what());
  }
}

std::vector<size_t> sweep_start_order(const std::vector<SweepRun>& runs, const std::vector<size_t>& pending,
                                      const std::vector<bool>& resumable) {
  std::vector<size_t> order = pending;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (resumable.at(a) != resumable.at(b)) return static_cast<bool>(resumable.at(a));
    return runs.at(a).seed < runs.at(b).seed;
  });
  return order;
}

SweepOutcome run_sweep(const SweepSpec& spec, const SweepOptions& options) {
  if (options.out_dir.empty()) fail("sweep needs --out SWEEP_DIR");
  if (options.jobs < 1) fail("--jobs must be >= 1, got {}", options.jobs);
  if (options.cores < 0) fail("--cores must be >= 1 (0 = all), got {}", options.cores);
  const auto runs = expand_sweep(spec);
  fs::create_directories(options.out_dir);
  const int64_t cores =
      options.cores > 0 ? options.cores : std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  const int64_t threads = std::max<int64_t>(1, cores / options.jobs);

  nlohmann::json manifest = {{"study", spec.study},
                             {"title", spec.title},
                             {"description", spec.description},
                             {"seeds", spec.seeds},
                             {"scale", spec.scale},
                             {"command", options.command},
                             {"git_commit", command_output("git rev-parse HEAD 2>/dev/null")},
                             {"binary_commit", build_commit()},
                             {"git_dirty", !command_output("git status --porcelain --untracked-files=no 2>/dev/null").empty()},
                             {"jobs", options.jobs},
                             {"threads_per_run", threads},
                             {"variants", nlohmann::json::array()},
                             {"runs", nlohmann::json::array()}};
  // manifest["runs"][slot[i]] is runs[i]. Runs an earlier invocation listed and this one does not
  // (another part of the study, --variants, more --seeds) keep their entries, so the report still
  // finds them, with the baseline the study names now (it may have named one since they were
  // listed): the report takes one baseline per variant, so a stale seed would decide it.
  std::vector<size_t> slot(runs.size());
  std::map<std::string, std::string> study_baseline;  // run name (variant and grid point) -> baseline
  {
    SweepSpec whole = spec;
    whole.variants.insert(whole.variants.end(), spec.left_out.begin(), spec.left_out.end());
    whole.seeds = 1;
    try {
      for (const auto& run : expand_sweep(whole)) study_baseline[run.variant] = run.baseline;
    } catch (const Error& error) {
      if (!options.quiet)
        fmt::print("sweep: the variants left out keep the baselines recorded before ({})\n", error.what());
    }
  }
  {
    std::map<std::string, size_t> mine;
    for (size_t i = 0; i < runs.size(); ++i) mine[runs[i].directory] = i;
    std::set<size_t> placed;
    auto& entries = manifest["runs"];
    if (file_exists(options.out_dir + "/sweep.json"))
      for (const auto& entry : read_sweep_manifest(options.out_dir).value("runs", nlohmann::json::array())) {
        const auto found = mine.find(entry.value("directory", std::string()));
        if (found == mine.end()) {
          entries.push_back(entry);
          const auto study = study_baseline.find(entry.value("variant", std::string()));
          if (study == study_baseline.end()) continue;
          if (study->second.empty()) entries.back().erase("baseline");
          else entries.back()["baseline"] = study->second;
        } else if (placed.insert(found->second).second) {
          slot[found->second] = entries.size();
          entries.push_back(run_to_json(runs[found->second]));
        }
      }
    for (size_t i = 0; i < runs.size(); ++i)
      if (!placed.count(i)) {
        slot[i] = entries.size();
        entries.push_back(run_to_json(runs[i]));
      }
    std::set<std::string> listed;
    for (const auto& entry : entries) {
      const auto variant = entry.value("variant", std::string());
      if (listed.insert(variant).second) manifest["variants"].push_back(variant);
    }
  }
  auto save = [&] { write_file_atomically(options.out_dir + "/sweep.json", manifest.dump(2) + "\n"); };
  auto say = [&](const std::string& text) {
    if (!options.quiet) fmt::print("sweep: {}\n", text);
    std::fflush(stdout);
  };

  // What each directory already holds decides: skip, resume, or start afresh.
  SweepOutcome outcome;
  std::vector<size_t> pending;
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto dir = options.out_dir + "/" + runs[i].directory;
    if (file_exists(dir + "/config.toml")) {
      const auto difference = Config::from_toml_file(dir + "/config.toml").first_experiment_difference(sweep_run_config(runs[i]));
      if (!difference.empty())
        fail("{} holds a different experiment than this sweep asks for ({}); use another --out", dir, difference);
    }
    if (file_exists(dir + "/summary.json")) {
      manifest["runs"][slot[i]]["status"] = "finished";
      ++outcome.skipped;
    } else {
      pending.push_back(i);
    }
  }
  save();
  std::set<std::string> variants_now;
  for (const auto& run : runs) variants_now.insert(run.variant);
  say(fmt::format("{} runs ({} variants x {} seeds), {} already finished; {} at a time, {} threads each",
                  runs.size(), variants_now.size(), spec.seeds, outcome.skipped, options.jobs, threads));

  // An upcycled run first runs `moelab upcycle` (once its source run has finished), then goes back
  // to the front of `waiting` to train from the checkpoint that wrote.
  enum class Stage { kUpcycle, kTrain };
  struct Child {
    size_t run;
    Stage stage;
    std::chrono::steady_clock::time_point started;
  };
  std::map<pid_t, Child> running;
  // A run resumes when a checkpoint and the config it was trained under are both there.
  auto can_resume = [&](const std::string& dir) {
    return checkpoint_exists(RunPaths(dir).checkpoint) && file_exists(dir + "/config.toml");
  };
  std::vector<bool> resumable(runs.size(), false);
  for (const size_t i : pending) resumable[i] = can_resume(options.out_dir + "/" + runs[i].directory);
  const auto order = sweep_start_order(runs, pending, resumable);
  std::deque<size_t> waiting(order.begin(), order.end());
  std::map<std::string, std::string> failed;  // run directory -> why, for this invocation's runs
  size_t done = outcome.skipped;
  auto record_failure = [&](size_t i, const std::string& why) {
    const auto dir = options.out_dir + "/" + runs[i].directory;
    ++done;
    ++outcome.failed;
    auto& entry = manifest["runs"][slot[i]];
    entry["status"] = "failed";
    entry["error"] = why;
    failed[runs[i].directory] = why;
    fs::create_directories(dir);
    write_file_atomically(dir + "/error.txt", why + "\n");
    save();
    say(fmt::format("[{}/{}] {} FAILED: {}", done, runs.size(), runs[i].directory, why));
  };
  // Stopped on request with a checkpoint: not a failure, and the next invocation resumes it.
  auto record_interruption = [&](size_t i, const std::string& why) {
    auto& entry = manifest["runs"][slot[i]];
    entry["status"] = "interrupted";
    entry["error"] = why;
    save();
    say(fmt::format("{} {}", runs[i].directory, why));
  };
  auto start = [&](size_t i) {
    const auto& run = runs[i];
    const auto dir = options.out_dir + "/" + run.directory;
    fs::create_directories(dir);
    fs::remove(dir + "/error.txt");
    const bool resume = can_resume(dir);
    const bool upcycle = run.upcycle && !resume;
    std::vector<std::string> args;
    if (upcycle) {
      args = {"upcycle", "--from", options.out_dir + "/" + run.upcycle->from, "--experts",
              std::to_string(run.upcycle->experts), "--bank", run.upcycle->bank, "--out", dir, "--force"};
      for (const auto& assignment : run.upcycle->overrides) args.insert(args.end(), {"--set", assignment});
    } else {
      args = {"train", "--quiet", "--out", dir, resume ? "--resume" : "--force"};
      // An upcycled run trains on as the config.toml of its upcycle step says.
      if (!run.upcycle) {
        if (!run.config_file.empty()) args.insert(args.end(), {"--config", run.config_file});
        for (const auto& assignment : run.overrides) args.insert(args.end(), {"--set", assignment});
      }
    }
    args.insert(args.end(), {"--set", "train.threads=" + std::to_string(threads)});
    const pid_t pid = spawn_train(options.moelab_executable, args, dir + "/train.log");
    running[pid] = {i, upcycle ? Stage::kUpcycle : Stage::kTrain, std::chrono::steady_clock::now()};
    manifest["runs"][slot[i]]["status"] = upcycle ? "upcycling" : "running";
    manifest["runs"][slot[i]]["resumed"] = resume;
    save();
    say(upcycle ? fmt::format("upcycling {} into {}", run.upcycle->from, run.directory)
                : fmt::format("{} {}", resume ? "resuming" : "starting", run.directory));
  };
  // Whether run i can start now; an upcycled run waits while its source waits or runs, and fails
  // (`why`) when its source failed or will not run in this invocation.
  enum class Readiness { kStart, kWait, kFail };
  auto readiness = [&](size_t i, std::string& why) {
    const auto& run = runs[i];
    if (!run.upcycle || checkpoint_exists(RunPaths(options.out_dir + "/" + run.directory).checkpoint) ||
        file_exists(options.out_dir + "/" + run.upcycle->from + "/summary.json"))
      return Readiness::kStart;
    const auto is_source = [&](size_t j) { return runs[j].directory == run.upcycle->from; };
    if (std::any_of(waiting.begin(), waiting.end(), is_source) ||
        std::any_of(running.begin(), running.end(), [&](const auto& c) { return is_source(c.second.run); }))
      return Readiness::kWait;
    const auto source_failed = failed.find(run.upcycle->from);
    why = source_failed != failed.end()
              ? fmt::format("its source run {} failed: {}", run.upcycle->from, source_failed->second)
              : fmt::format("its source run {} has not finished", run.upcycle->from);
    return Readiness::kFail;
  };
  // Asked to stop (SIGINT, SIGTERM): start nothing more, pass SIGTERM to the running runs (each
  // checkpoints the step it is on and stops) and wait for them.
  bool stopping = false;
  // A run that ended by SIGINT or SIGTERM was stopped (by this sweep passing a stop on, or by a
  // batch system signalling every process of the job): resumable, not failed.
  auto record_stopped = [&](size_t i, Stage stage, int signal_number) {
    const auto dir = options.out_dir + "/" + runs[i].directory;
    std::optional<FoundCheckpoint> checkpoint;
    try {
      checkpoint = find_checkpoint(RunPaths(dir).checkpoint);
    } catch (const Error&) {  // unusable: the next invocation starts the run afresh
    }
    ++outcome.interrupted;
    const auto by = signal_name(signal_number);
    if (checkpoint && stage == Stage::kTrain)
      record_interruption(i, fmt::format("stopped by {} after step {} (its checkpoint is kept: run the sweep again "
                                         "to resume)", by, checkpoint->meta.step));
    else if (checkpoint)
      record_interruption(i, fmt::format("stopped by {} while upcycling (run the sweep again to train on)", by));
    else
      record_interruption(i, fmt::format("stopped by {} before its first checkpoint (run the sweep again to start "
                                         "it afresh)", by));
  };
  try {
    while (!waiting.empty() || !running.empty()) {
      if (!stopping && stop_signal_received() != 0) {
        stopping = true;
        outcome.stopped_by_signal = stop_signal_received();
        say(fmt::format("{}: asking {} running run(s) to checkpoint and stop; run the sweep again to resume",
                        signal_name(outcome.stopped_by_signal), running.size()));
        for (const auto& [pid, child] : running) kill(pid, SIGTERM);
      }
      if (stopping && running.empty()) break;
      // The flag itself, not `stopping`: a signal that arrives while runs are being started stops the
      // next start, not only the next round.
      for (auto it = waiting.begin(); stop_signal_received() == 0 && it != waiting.end() &&
                                      static_cast<int64_t>(running.size()) < options.jobs;) {
        const size_t i = *it;
        std::string why;
        const auto state = readiness(i, why);
        if (state == Readiness::kWait) {
          ++it;  // its source run comes first
          continue;
        }
        it = waiting.erase(it);
        if (state == Readiness::kStart)
          start(i);
        else
          record_failure(i, why);
      }
      if (running.empty()) continue;  // only failures were recorded
      int status = 0;
      // Polled, so a stop request is seen within a fraction of a second while runs go on for hours.
      const pid_t pid = waitpid(-1, &status, WNOHANG);
      if (pid == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      if (pid < 0) fail("waiting for the sweep's runs failed: {}", std::strerror(errno));
      const auto found = running.find(pid);
      if (found == running.end()) continue;
      const Child child = found->second;
      running.erase(found);
      const size_t i = child.run;
      const auto& run = runs[i];
      const auto dir = options.out_dir + "/" + run.directory;
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - child.started).count();
      auto& entry = manifest["runs"][slot[i]];
      const bool exited_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (child.stage == Stage::kUpcycle && exited_ok && checkpoint_exists(RunPaths(dir).checkpoint)) {
        entry["upcycle_seconds"] = seconds;
        waiting.push_front(i);
        continue;
      }
      entry["seconds"] = seconds;
      if (exited_ok && child.stage == Stage::kTrain && file_exists(dir + "/summary.json")) {
        ++done;
        ++outcome.finished;
        entry["status"] = "finished";
        entry.erase("error");
        const auto summary = nlohmann::json::parse(read_text_file(dir + "/summary.json"));
        std::string figure = "no validation figure";
        for (const auto& key : headline_validation_keys())
          if (summary.contains(key) && summary[key].is_number()) {
            figure = fmt::format("{} {:.2f}", report_column(key)->label, summary[key].get<double>());
            break;
          }
        say(fmt::format("[{}/{}] {} finished in {:.0f} s: {}", done, runs.size(), run.directory, seconds, figure));
        save();
      } else if (WIFSIGNALED(status) && (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGINT)) {
        record_stopped(i, child.stage, WTERMSIG(status));
      } else {
        std::string why = WIFSIGNALED(status) ? fmt::format("killed by signal {}", WTERMSIG(status))
                                              : error_line(dir + "/train.log");
        if (WIFEXITED(status) && WEXITSTATUS(status) == 127) why = "could not run " + options.moelab_executable;
        if (exited_ok) why = child.stage == Stage::kUpcycle ? "wrote no checkpoint" : "wrote no summary.json";
        record_failure(i, (child.stage == Stage::kUpcycle ? "upcycle: " : "") + why);
      }
    }
  } catch (...) {
    // The sweep cannot go on (an unreadable summary, a failed wait): its runs stop with it, at a
    // checkpoint, rather than train on unwatched.
    for (const auto& [pid, child] : running) kill(pid, SIGTERM);
    for (const auto& [pid, child] : running) waitpid(pid, nullptr, 0);
    throw;
  }
  say(fmt::format("done: {} trained now, {} were already finished, {} failed{}; {}/sweep.json", outcome.finished,
                  outcome.skipped, outcome.failed,
                  outcome.interrupted > 0 ? fmt::format(", {} interrupted", outcome.interrupted) : "", options.out_dir));
  return outcome;
}

}  // namespace moelab
