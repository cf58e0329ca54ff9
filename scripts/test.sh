#!/usr/bin/env bash
# Builds and runs every test on the real default models (fetched on first
# use). Tests run in release mode: the numeric crates are far too slow
# unoptimised, and release shares the build with the demo.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/install-browser.sh"
echo "==> tests"
cargo test --release --locked --no-fail-fast "$@"
