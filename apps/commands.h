// One function per subcommand; each registers its options and callback on the main CLI11 app.
#pragma once
#include <CLI/CLI.hpp>

namespace moelab::cli {

void add_data_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_info_command(CLI::App& app);
void add_routes_command(CLI::App& app);
void add_upcycle_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_sweep_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_bleu_command(CLI::App& app);
void add_translate_command(CLI::App& app);

// The path of this moelab binary (/proc/self/exe): sweeps start runs with it, reports ask it for
// `info --system`. Throws moelab::Error where it cannot be read.
std::string this_executable();

}  // namespace moelab::cli
