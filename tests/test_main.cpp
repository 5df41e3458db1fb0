// The suite's main: the same process set-up as the CLI (fast OpenBLAS kernels, malloc tuning), so
// tests run with the kernels users get. gtest_discover_tests runs this binary too; a re-exec keeps
// its arguments.
#include <gtest/gtest.h>

#include "moelab/util/blas_env.h"

int main(int argc, char** argv) {
  moelab::tune_process_environment(argc, argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
