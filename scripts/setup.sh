#!/usr/bin/env bash
# Installs the Debian packages meshtrain builds and runs with (and, given `tests`, what its tests
# also need). Idempotent: installs only what is missing and prints nothing when everything is there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenmpi-dev openmpi-bin
  libhdf5-openmpi-dev hdf5-tools zlib1g-dev libisal-dev
  libopenblas-openmp-dev libdnnl-dev
  ocl-icd-opencl-dev  # Debian's oneDNN is built with an OpenCL GPU runtime: its CMake package needs OpenCL's headers
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libfmt-dev libcpp-httplib-dev
  libomp-dev
  python3 procps
  fortunes-min fortunes
)

# `setup.sh tests` adds what only the tests use: headless Chromium for the chat page's browser test,
# h5py, which a chapter of docs/learn reads a checkpoint with, and curl, which another talks to the server with.
# `setup.sh fuzz`: clang with its sanitizer runtimes and libFuzzer, for tests/fuzz/run.sh and
# scripts/test_sanitizers.sh. Several words may be given (`setup.sh tests fuzz`).
for extra in "$@"; do
  case "$extra" in
    tests) packages+=(chromium python3-h5py curl) ;;
    fuzz) packages+=(clang-14 libfuzzer-14-dev libclang-rt-14-dev) ;;
    *) echo "setup: unknown word '$extra' (tests, fuzz)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "setup: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
