# Shared by quickstart.sh and test.sh: install what is missing (Debian packages), then build.
# Idempotent: installed packages and an up-to-date build are left alone.
set -euo pipefail

MOELAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOELAB_BUILD="${MOELAB_BUILD:-$MOELAB_ROOT/build}"

# Debian's LibTorch links the generic libblas.so.3: without OpenBLAS it would silently run the
# reference BLAS, many times slower. The OpenMP build shares LibTorch's thread pool.
MOELAB_PACKAGES=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-openmp libgloo-dev
  libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  bible-kjv gnuplot-nox
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

moelab_build() {
  local jobs
  jobs="$(nproc)"
  cmake -S "$MOELAB_ROOT" -B "$MOELAB_BUILD" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$MOELAB_BUILD" -j"$jobs"
}
