#!/usr/bin/env bash
# README command 2: install what is missing, build, run the whole test suite with ctest.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
moelab_install_packages
moelab_build -DMOELAB_BUILD_TESTS=ON
cd "$MOELAB_BUILD"
ctest --output-on-failure -j"$(nproc)" --timeout 900
