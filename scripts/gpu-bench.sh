#!/usr/bin/env bash
# GPU benchmark: `callbox bench` on the `gpu` model set (CALLBOX_MODEL_SET) at 1, 8 and 32
# simultaneous callers, one report each, and a summary of p50/p95 Total and
# End-of-speech per load with the GPU named.
#
# On a CUDA machine with Rust and network it builds the binary
# (scripts/build-cuda.sh) and fetches the models. On a GPU host with neither,
# copy a binary and a model cache over and name them:
#
#   CALLBOX_BIN=/path/to/callbox CALLBOX_MODELS=/path/to/models scripts/gpu-bench.sh
#
#   CALLERS     loads to run (default "1 8 32")
#   ROUNDS      calls per caller (default 2); TURNS caller turns per call (4)
#   OUT         reports (default out/gpu-bench)
#   CUDA_LIBS   folders holding the CUDA libraries the binary was linked
#               against (`ldd` lists them: libcurand, libcuda), when they are not
#               on the loader's path: e.g. a Python environment's
#               site-packages/nvidia/*/lib
#   COMPARE_BATCH=1  every load twice in one report: continuous batching
#               against a context per call (scripts/bench/batch-*.toml)
#   Any CALLBOX_* setting passes through to the server, e.g.
#   CALLBOX_DEVICES__TTS=cpu to keep Piper off the GPU.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CALLERS="${CALLERS:-1 8 32}"
ROUNDS="${ROUNDS:-2}"
TURNS="${TURNS:-4}"
OUT="${OUT:-out/gpu-bench}"
export CALLBOX_MODEL_SET="${CALLBOX_MODEL_SET:-gpu}"

if [ -n "${CUDA_LIBS:-}" ]; then
  export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

gpu="no NVIDIA GPU visible"
if command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
  gpu="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
else
  echo "warning: nvidia-smi sees no GPU; the figures will not be GPU figures" >&2
fi
echo "==> GPU: $gpu"

bin="${CALLBOX_BIN:-}"
if [ -z "$bin" ]; then
  bin="${CARGO_TARGET_DIR:-$HOME/.cache/callbox/target-cuda}/release/callbox"
  if [ ! -x "$bin" ]; then
    command -v cargo >/dev/null || { echo "error: no callbox binary and no Rust toolchain: set CALLBOX_BIN" >&2; exit 1; }
    bash scripts/build-cuda.sh
  fi
fi
[ -x "$bin" ] || { echo "error: $bin is not an executable callbox" >&2; exit 1; }
if ! "$bin" --version >/dev/null 2>&1; then
  echo "error: $bin does not start; the libraries it lacks:" >&2
  ldd "$bin" | grep "not found" >&2 || true
  echo "(set CUDA_LIBS to the folders that hold them)" >&2
  exit 1
fi
echo "==> binary: $bin ($("$bin" --version))"

# The models: checked, and fetched only when something is missing (which
# needs network; on an offline host copy the cache and set CALLBOX_MODELS).
if ! "$bin" models check >/dev/null 2>&1; then
  echo "==> fetching the gpu model set"
  "$bin" models fetch || {
    echo "error: the gpu model set is incomplete and cannot be fetched here;" >&2
    echo "       copy a model cache and set CALLBOX_MODELS (callbox models check lists what is missing)" >&2
    exit 1
  }
fi

stacks=()
if [ "${COMPARE_BATCH:-0}" = "1" ]; then
  stacks=(--compare scripts/bench/batch-on.toml scripts/bench/batch-off.toml)
fi
mkdir -p "$OUT"
for n in $CALLERS; do
  echo "==> $n caller(s) at once, $ROUNDS call(s) each, $TURNS turns per call"
  "$bin" bench --callers "$n" --rounds "$ROUNDS" --turns "$TURNS" --ramp-up-secs 2 \
    "${stacks[@]}" --out "$OUT/callers-$n" | tee "$OUT/callers-$n.txt"
done

# One line per load from the reports: the figures the README quotes.
summary="$OUT/summary.md"
{
  echo "GPU: $gpu; binary: $("$bin" --version); $(date -u +%Y-%m-%d)"
  echo
  echo "| callers | stack | turns | Total p50 | Total p95 | End-of-speech p50 | End-of-speech p95 | answered |"
  echo "|---:|---|---:|---:|---:|---:|---:|---:|"
  for n in $CALLERS; do
    "$bin" bench-summary "$OUT/callers-$n/report.json"
  done
} > "$summary"
cat "$summary"
