#!/usr/bin/env bash
# ThreadSanitizer over the threaded parts of moelab: the grouped products' parallel path (experts
# split over LibTorch's threads), the distributed tests (the heartbeat thread beside training, two
# processes per test) and the parallel training tests. Debian's LibTorch, clang, build-tsan/.
# LibTorch is not instrumented: tsan.supp names the reports from its Gloo process group, whose
# synchronisation TSan sees only half of; any other report fails the run (exit code 66).
#   scripts/tsan.sh [GTEST_FILTER]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
moelab_install_packages
MOELAB_TORCH=debian moelab_select_torch debian
build="${MOELAB_TSAN_BUILD:-$MOELAB_ROOT/build-tsan}"
filter="${1:-GroupedMatmul.*:Distributed.*:Resharding.*:Modes/ParallelTraining.*:MoELayer.*}"
moelab_setup_ccache
cmake -S "$MOELAB_ROOT" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DMOELAB_TSAN=ON -DMOELAB_BUILD_BENCH=OFF -DMOELAB_BUILD_TESTS=ON \
  "${MOELAB_CCACHE_ARGS[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)" --target moelab_tests moelab moelab_dist_worker
export TSAN_OPTIONS="suppressions=$MOELAB_ROOT/scripts/tsan.supp halt_on_error=0 exitcode=66 second_deadlock_stack=1"
export OMP_NUM_THREADS=2
cd "$build" && ./tests/moelab_tests --gtest_filter="$filter"
