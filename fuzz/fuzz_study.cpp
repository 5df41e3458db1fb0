// A study file (sweep variants, grid, seeds, scale) expanded into the runs it describes.
#include "fuzz_input.h"
#include "moelab/report/sweep.h"
#include "moelab/util/error.h"

MOELAB_FUZZ_TARGET(study) {
  const auto path = moelab::fuzz::scratch_directory() + "/study.toml";
  moelab::fuzz::write_bytes(path, std::string(reinterpret_cast<const char*>(data), size));
  try {
    auto spec = moelab::parse_study_file(path);
    if (spec.seeds > 3) spec.seeds = 3;  // the expansion's size, not its logic, grows with seeds
    moelab::expand_sweep(spec);
  } catch (const moelab::Error&) {
  }
  return 0;
}
