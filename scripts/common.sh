# Shared by quickstart.sh and test.sh: install what is missing (Debian packages, and for the
# LibTorch 2.x build a PyPI `torch` in a cached virtual environment), then build.
# Idempotent: installed packages, a complete environment and an up-to-date build are left alone.
#
# MOELAB_TORCH picks the LibTorch:
#   debian (default)  Debian's libtorch-dev 1.13, CPU only, build/ .
#   pip               the LibTorch inside PyPI's torch wheel (MOELAB_TORCH_VERSION, CUDA), build-pip/ .
set -euo pipefail

MOELAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOELAB_TORCH_VERSION="${MOELAB_TORCH_VERSION:-2.15.0}"
# Outside the clone, so that CI's fresh clones on one machine reuse the 1.7 GB environment and the
# compiler cache.
MOELAB_CACHE="${MOELAB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moelab}"

# Sets MOELAB_TORCH and the build folder for it: build/ for Debian's LibTorch, build-pip/ for PyPI's
# (MOELAB_BUILD overrides the folder of the one LibTorch chosen).
moelab_select_torch() {
  MOELAB_TORCH="$1"
  case "$MOELAB_TORCH" in
    debian) MOELAB_BUILD="${MOELAB_BUILD_OVERRIDE:-$MOELAB_ROOT/build}" ;;
    pip) MOELAB_BUILD="${MOELAB_BUILD_OVERRIDE:-$MOELAB_ROOT/build-pip}" ;;
    # Debian's LibTorch built with clang under ASan + UBSan, with the libFuzzer targets (fuzz/).
    sanitize) MOELAB_BUILD="${MOELAB_BUILD_OVERRIDE:-$MOELAB_ROOT/build-asan}" ;;
    *) echo "moelab: error: MOELAB_TORCH must be 'debian', 'pip' or 'sanitize', not '$MOELAB_TORCH'" >&2; exit 1 ;;
  esac
}
MOELAB_BUILD_OVERRIDE="${MOELAB_BUILD:-}"
MOELAB_TORCH_FROM_USER=0
[[ -n "${MOELAB_TORCH:-}" ]] && MOELAB_TORCH_FROM_USER=1
moelab_select_torch "${MOELAB_TORCH:-debian}"

# Debian's LibTorch links the generic libblas.so.3: without OpenBLAS it would silently run the
# reference BLAS, many times slower. The OpenMP build shares LibTorch's thread pool.
MOELAB_PACKAGES=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-openmp libgloo-dev
  libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libsentencepiece-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  bible-kjv gnuplot-nox ccache python3-venv
  clang libclang-rt-14-dev
)

moelab_install_packages() {
  local missing=()
  for pkg in "${MOELAB_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]})); then
    echo "moelab: installing Debian packages: ${missing[*]}"
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
      command -v sudo >/dev/null || { echo "moelab: error: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
      sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
  # If the generic BLAS still points at the reference implementation, switch it to OpenBLAS.
  local blas
  blas="$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)"
  if [[ "$blas" == */blas/libblas.so.3* ]]; then
    local sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo update-alternatives --set libblas.so.3-x86_64-linux-gnu \
      /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 || true
  fi
}

# The CUDA toolkit's libraries (cuBLAS, cuDNN, NCCL, ...) where this machine has them.
moelab_cuda_lib_dir() {
  local d
  for d in "${CUDA_HOME:-}/lib64" /usr/local/cuda/lib64; do
    [[ -e "$d/libcudart.so" ]] && { echo "$d"; return 0; }
  done
  return 1
}

# A virtual environment holding PyPI's torch, keyed by its version and the Python's, under
# $MOELAB_CACHE. Only the wheel itself is installed (--no-deps) when the machine's CUDA toolkit
# provides the libraries it links; the few it lacks come from their own wheels, pinned by torch's
# metadata. Without a matching toolkit, torch's full dependency set is installed instead.
moelab_torch_venv() {
  local py pyver
  py="$(command -v python3)" || { echo "moelab: error: MOELAB_TORCH=pip needs python3" >&2; exit 1; }
  pyver="$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  echo "$MOELAB_CACHE/torch-$MOELAB_TORCH_VERSION-py$pyver"
}

moelab_torch_site() {
  "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'
}

# Libraries that torch's shared objects need and the dynamic loader cannot find.
moelab_torch_missing_libs() {
  local site="$1" cuda_dir
  cuda_dir="$(moelab_cuda_lib_dir || true)"
  LD_LIBRARY_PATH="${cuda_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    ldd "$site"/torch/lib/libtorch_cuda.so "$site"/torch/lib/libtorch_cuda_linalg.so 2>/dev/null |
    awk '/not found/ {print $1}' | sort -u
}

# pip, without its resolver's complaint about the dependencies that --no-deps left out on purpose.
moelab_pip() {
  "$MOELAB_TORCH_PIP" install -q --disable-pip-version-check "$@" 2>&1 |
    { grep -v -E "^torch .* requires |dependency resolver does not currently|^ERROR: pip's" || true; }
  return "${PIPESTATUS[0]}"
}

moelab_install_torch_pip() {
  local venv site start
  venv="$(moelab_torch_venv)"
  if [[ -f "$venv/.complete" ]]; then
    MOELAB_TORCH_VENV="$venv"
    return 0
  fi
  start=$SECONDS
  echo "moelab: installing PyPI torch==$MOELAB_TORCH_VERSION into $venv"
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  MOELAB_TORCH_PIP="$venv/bin/pip"
  moelab_pip --no-deps "torch==$MOELAB_TORCH_VERSION"
  site="$(moelab_torch_site "$venv")"
  # The wheel names its CUDA libraries as requirements; take the pins for those this machine lacks,
  # and NCCL's always: LibTorch calls the NCCL it was built with (2.30 for torch 2.15; the CUDA 13.0
  # toolkit has 2.28, which lacks symbols it links).
  local reqs=() missing
  missing="$(moelab_torch_missing_libs "$site")"
  if moelab_cuda_lib_dir >/dev/null; then
    mapfile -t reqs < <("$venv/bin/python" - "$missing" <<'PY'
import importlib.metadata as md, re, sys
missing = sys.argv[1].split()
wanted = {"libcusparseLt": "nvidia-cusparselt", "libnvshmem": "nvidia-nvshmem", "libcufile": "cufile"}
for req in md.requires("torch") or []:
    spec = req.split(";")[0].strip()
    if spec.startswith("nvidia-nccl"):
        print(spec)
    for lib, name in wanted.items():
        if any(m.startswith(lib) for m in missing) and name in spec:
            # cuda-toolkit[...,cufile,...]==X: ask for the cufile extra alone.
            print(re.sub(r"\[.*\]", "[cufile]", spec) if name == "cufile" else spec)
PY
    )
    if ((${#reqs[@]})); then
      moelab_pip "${reqs[@]}"
    fi
    missing="$(moelab_torch_missing_libs "$site")"
  fi
  if [[ -n "$missing" ]]; then
    echo "moelab: the CUDA toolkit here does not provide $(echo $missing); installing torch's own CUDA wheels"
    moelab_pip "torch==$MOELAB_TORCH_VERSION"
    missing="$(moelab_torch_missing_libs "$site")"
    [[ -z "$missing" ]] || { echo "moelab: error: torch's libraries still miss: $(echo $missing)" >&2; exit 1; }
  fi
  touch "$venv/.complete"
  echo "moelab: torch environment ready in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1) on disk"
  MOELAB_TORCH_VENV="$venv"
}

# Compiler cache outside the clone: CI builds every submission from a fresh clone. Sets the
# environment ccache reads (call it directly, not in a subshell) and MOELAB_CCACHE_ARGS for CMake.
moelab_setup_ccache() {
  MOELAB_CCACHE_ARGS=()
  if command -v ccache >/dev/null; then
    export CCACHE_DIR="${CCACHE_DIR:-$MOELAB_CACHE/ccache}"
    export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"
    # The precompiled header's timestamps differ between clones; its content decides.
    export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
    # Depend mode: on a miss, the compiler's own dependency file instead of a second, preprocessing
    # pass over LibTorch's headers (which nearly doubled a cold build).
    export CCACHE_DEPEND="${CCACHE_DEPEND:-1}"
    # Paths inside the clone hash relative to it, so a clone in another folder can hit the cache.
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$MOELAB_ROOT}"
    # With -g (the sanitizer build) ccache also hashes the working folder: not wanted either.
    export CCACHE_NOHASHDIR="${CCACHE_NOHASHDIR:-1}"
    # The launcher carries the settings itself: a later `cmake --build` from a shell without this
    # environment otherwise used ccache's default folder without the sloppiness, where every file
    # that includes the precompiled header is counted could_not_use_precompiled_header and none is
    # ever cached (67 such files and a 956 s rebuild in the twelfth session).
    local launcher="env" name
    for name in CCACHE_DIR CCACHE_MAXSIZE CCACHE_SLOPPINESS CCACHE_DEPEND CCACHE_BASEDIR CCACHE_NOHASHDIR; do
      launcher+=";$name=${!name}"
    done
    MOELAB_CCACHE_ARGS=("-DCMAKE_CXX_COMPILER_LAUNCHER=$launcher;$MOELAB_ROOT/scripts/ccache_launcher.sh")
  fi
}

# "ccache: H hits, M misses" since the last moelab_build (or "no ccache").
moelab_ccache_summary() {
  command -v ccache >/dev/null || { echo "no ccache"; return; }
  ccache --print-stats 2>/dev/null | awk '
    /^(direct_cache_hit|preprocessed_cache_hit)\t/ {hit += $2}
    /^cache_miss\t/ {miss += $2}
    /^(could_not_use_precompiled_header|preprocessor_error|unsupported_compiler_option)\t/ {other += $2}
    END {printf "ccache: %d hits, %d misses, %d uncacheable", hit, miss, other}'
}

moelab_build() {
  local jobs args=()
  jobs="$(nproc)"
  if [[ "$MOELAB_TORCH" == pip ]]; then
    moelab_install_torch_pip
    local site cuda_dir
    site="$(moelab_torch_site "$MOELAB_TORCH_VENV")"
    # The torch folder itself as the prefix: its lib/ is then searched before /usr/lib, where
    # Debian's libtorch.so may also be.
    args+=("-DCMAKE_PREFIX_PATH=$site/torch")
    cuda_dir="$(moelab_cuda_lib_dir || true)"
    [[ -n "$cuda_dir" ]] && args+=("-DCUDAToolkit_ROOT=$(dirname "$cuda_dir")")
  fi
  if [[ "$MOELAB_TORCH" == sanitize ]]; then
    args+=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DMOELAB_FUZZ=ON
      -DMOELAB_BUILD_BENCH=OFF)
  fi
  moelab_setup_ccache
  args+=("${MOELAB_CCACHE_ARGS[@]}")
  command -v ccache >/dev/null && ccache -z >/dev/null
  cmake -S "$MOELAB_ROOT" -B "$MOELAB_BUILD" -DCMAKE_BUILD_TYPE=Release "${args[@]}" "$@" >/dev/null
  cmake --build "$MOELAB_BUILD" -j"$jobs"
}
