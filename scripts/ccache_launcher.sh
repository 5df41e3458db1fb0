#!/usr/bin/env bash
# The compiler launcher CMake runs (moelab_setup_ccache in common.sh): ccache, with one step first.
#
# GCC's precompiled header is not byte-reproducible (two compilations of the same header differ),
# and ccache hashes its content into the key of every object that includes it. When the header is
# rebuilt in a build folder that still holds the old one (a new source file rewrites flags.make,
# on which it depends), ccache also takes the old file's content into the new one's key: a miss,
# new bytes, and then a miss for every object. Without the old file the key is the one a fresh
# clone computes, so the header comes back from the cache with the bytes the objects were cached
# against.
output=""
header=0
previous=""
for argument in "$@"; do
  [[ "$previous" == -o ]] && output="$argument"
  [[ "$previous" == -x && "$argument" == c++-header ]] && header=1
  previous="$argument"
done
if (( header )) && [[ "$output" == *.gch ]]; then
  rm -f "$output"
fi
exec ccache "$@"
