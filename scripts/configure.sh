#!/usr/bin/env bash
# cmake --preset PRESET [ARGS...], for the scripts: the presets build with Ninja, and a build folder
# that an earlier checkout configured with another generator (Unix Makefiles) would make CMake stop;
# its cache is dropped first (the objects are rebuilt), saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
preset=$1
dir=build/$preset
cache=$dir/CMakeCache.txt
if [ -f "$cache" ] && ! grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja$' "$cache"; then
  echo "[configure] $dir was configured with another generator; reconfiguring it with Ninja" >&2
  rm -rf "$cache" "$dir/CMakeFiles"
fi
exec cmake --preset "$@" >/dev/null
