// moelab: build, train, measure and compare sparsely-gated Mixture-of-Experts models.
// The CLI is thin: it parses arguments and calls the library.
#include <c10/util/Exception.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "commands.h"
#include "moelab/comm/communicator.h"
#include "moelab/util/blas_env.h"
#include "moelab/util/error.h"
#include "moelab/util/fatal_signal.h"

namespace {

// After a failed collective the process group's threads may be blocked on a dead peer, and its
// destructors would wait for them: leave without running them.
int failure_exit() {
  if (moelab::world_failed()) {
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  moelab::tune_process_environment(argc, argv);  // may re-execute with faster BLAS kernels
  moelab::install_fatal_signal_reporter();

  CLI::App app{"moelab: sparsely-gated Mixture-of-Experts models (Shazeer et al. 2017 and after)"};
  app.require_subcommand(1);
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  moelab::cli::add_data_command(app);
  moelab::cli::add_train_command(app);
  moelab::cli::add_eval_command(app);
  moelab::cli::add_generate_command(app);
  moelab::cli::add_info_command(app);
  moelab::cli::add_routes_command(app);
  moelab::cli::add_upcycle_command(app);
  moelab::cli::add_bench_command(app);
  moelab::cli::add_sweep_command(app);
  moelab::cli::add_report_command(app);
  moelab::cli::add_translate_command(app);
  moelab::cli::add_bleu_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    return app.exit(error);
  } catch (const moelab::Error& error) {
    std::fprintf(stderr, "moelab: error: %s\n", error.what());
    return failure_exit();
  } catch (const c10::Error& error) {
    std::fprintf(stderr, "moelab: error: %s\n", moelab::first_line(error).c_str());
    return failure_exit();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "moelab: error: %s\n", error.what());
    return failure_exit();
  }
  return 0;
}
