#!/usr/bin/env bash
# README command 2: install what is missing, build, run the whole test suite with ctest, against both
# LibTorch builds: Debian's 1.13 (CPU) and PyPI's 2.x (CUDA compiled and linked; its tests run on the
# CPU here, and on a GPU where there is one); then a third time under ASan + UBSan (Debian's LibTorch,
# clang), followed by a short run of every fuzz target. MOELAB_TORCH=debian, =pip or =sanitize tests
# one build only. The pip build's suite also loads checkpoints written by the Debian build's moelab
# and the reverse.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
bash "$MOELAB_ROOT/scripts/check_layers.sh"  # seconds, and before an hour of builds
moelab_install_packages
legs=(debian pip sanitize)
[[ "$MOELAB_TORCH_FROM_USER" == 1 ]] && legs=("$MOELAB_TORCH")
status=0
peer=""
for leg in "${legs[@]}"; do
  moelab_select_torch "$leg"
  start=$SECONDS
  echo "moelab: === $leg LibTorch: building in $MOELAB_BUILD ==="
  moelab_build -DMOELAB_BUILD_TESTS=ON
  echo "moelab: $leg build ready in $((SECONDS - start)) s ($(moelab_ccache_summary))"
  if [[ "$leg" == pip ]]; then
    # The CUDA side is in the binary: show it, so the log proves it was compiled and linked.
    echo "moelab: CUDA objects: $(cd "$MOELAB_BUILD" && find . -path '*src/cuda/*.o' | sort | tr '\n' ' ')"
    echo "moelab: moelab links $(ldd "$MOELAB_BUILD/moelab" | awk '/libtorch_cuda|libc10_cuda|libcudart|libnccl/ {print $1}' | sort -u | tr '\n' ' ')"
  fi
  "$MOELAB_BUILD/moelab" info --system | head -2
  start=$SECONDS
  if [[ "$leg" == sanitize ]]; then
    # LibTorch itself is not instrumented and keeps allocations until exit: leaks are not checked.
    (cd "$MOELAB_BUILD" && ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
      ctest --output-on-failure -j"$(nproc)" --timeout 900) || status=1
    echo "moelab: $leg tests took $((SECONDS - start)) s"
    bash "$MOELAB_ROOT/scripts/fuzz.sh" 15 || status=1
    continue
  fi
  (cd "$MOELAB_BUILD" && MOELAB_PEER_EXECUTABLE="$peer" ctest --output-on-failure -j"$(nproc)" --timeout 900) || status=1
  echo "moelab: $leg tests took $((SECONDS - start)) s"
  peer="$MOELAB_BUILD/moelab"
done
exit $status
