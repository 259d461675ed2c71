#!/usr/bin/env bash
# Packs the Debian packages a build needs onto a machine without a package registry (a lent GPU
# machine): runs ../shared/device/pack-deps.sh (next to the checkout) with the libraries the project
# links beyond its defaults (Open MPI, parallel HDF5, OpenBLAS, GoogleTest). It downloads, never
# installs, about 41 MiB of .deb files into .devdeps/ (kept out of git); carry that folder to the
# machine, where scripts/device_check.sh unpacks it. Run on Debian 12 after `apt-get update`.
# Usage: bash scripts/pack_device_deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pack=../shared/device/pack-deps.sh
[ -f "$pack" ] || { echo "pack_device_deps: $pack not found (it comes with the machine's shared folder)" >&2; exit 1; }
# Beyond pack-deps.sh's own list: the header-only and small libraries (CLI11, toml++, JSON, fmt,
# cpp-httplib and the OpenSSL, Brotli and zlib headers its header includes), ISA-L for checksums,
# Google Benchmark and GoogleMock, and OpenBLAS's OpenMP build (the one the project links).
export DEVDEPS_EXTRA="libcli11-dev libtomlplusplus-dev nlohmann-json3-dev libfmt-dev libcpp-httplib-dev libssl-dev
  libbrotli-dev zlib1g-dev libisal-dev libbenchmark-dev libgmock-dev libopenblas-openmp-dev"
export DEVDEPS_MAX_MIB=${DEVDEPS_MAX_MIB:-56}  # the device tool carries 64 MiB, the working tree included
bash "$pack"
