#!/usr/bin/env bash
# Fuzzes everything that parses input from outside: Twilio's websocket frames,
# webhook forms and signatures, dial-out bodies, configuration files. Not part
# of the default test run (it needs nightly Rust and takes a while); the
# default run replays the corpus this grows (tests/fuzz_corpus.rs).
#
#   scripts/fuzz.sh [RUNS] [TARGET...]    RUNS defaults to 1000000 per target
#
# New inputs that reach new code are kept in fuzz/corpus/<target>/ (minimised
# at the end); a crash stops the run and is saved in fuzz/artifacts/<target>/.
# Commit the corpus; turn each crash into a case in tests/fuzz_corpus.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs="${1:-1000000}"; shift || true
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(twilio_ws webhook dialout config)
# Its own build folder: fuzzing instruments every crate, llama.cpp's bindings
# included, so it shares nothing with the normal build.
export CARGO_TARGET_DIR="${CALLBOX_FUZZ_TARGET_DIR:-$HOME/.cache/callbox/fuzz-target}"

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked

cd fuzz
# Release with debug assertions: fast, and integer overflow still panics.
cargo +nightly fuzz build -O -a "${targets[@]/#/}" 2>/dev/null || cargo +nightly fuzz build -O -a
for t in "${targets[@]}"; do
  echo "==> $t: $runs executions"
  mkdir -p "artifacts/$t"
  cargo +nightly fuzz run -O -a "$t" -- -runs="$runs" -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))|ERROR|panicked' || true
  # A crash leaves its input behind and a non-zero status above.
  if compgen -G "artifacts/$t/crash-*" >/dev/null; then
    echo "error: $t crashed; inputs in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  cargo +nightly fuzz cmin -O -a "$t" >/dev/null 2>&1
  echo "    corpus: $(ls "corpus/$t" | wc -l) inputs"
done
