#!/usr/bin/env bash
# callbox against the bot it replaces: the seed's Pipecat stack (bot.py), on
# the faked API stack and on callbox's own models, benched by the same
# simulated callers in one report per caller count.
#
#   scripts/peers/pipecat/run.sh                 # callbox, pipecat-local, pipecat-api; 1 and 4 callers
#   scripts/peers/pipecat/run.sh --smoke         # one short call against each peer
#   scripts/peers/pipecat/run.sh --stacks api --callers 1 --turns 4 --rounds 1
#
# Options: --stacks local,api (which Pipecat peers), --callers "1 4",
# --turns N and --rounds N (as callbox bench), --out DIR (default out/peers),
# --no-callbox (the peers only).
#
# Installs the pinned requirements into a venv outside the clone
# ($CALLBOX_PEERS, default ~/.cache/callbox/peers/pipecat) the first time,
# building llama-cpp-python (about ten minutes on 2 cores). Writes
# DIR/callers-N/report.{md,json} and chart.svg, each peer's log, and
# DIR/calibration.md: Pipecat's own per-turn breakdown of the faked API stack
# against the seed's published table.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/../../setup.sh" # builds callbox, fetches the default models; cd to the root

stacks=local,api callers="1 4" turns=6 rounds=2 out=out/peers with_callbox=1 smoke=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --stacks) stacks=$2; shift 2 ;;
        --callers) callers=$2; shift 2 ;;
        --turns) turns=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --no-callbox) with_callbox=0; shift ;;
        --smoke) smoke=1; callers=1; turns=1; rounds=1; with_callbox=0; shift ;;
        *) echo "unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
done

models=${CALLBOX_MODELS:-$HOME/.cache/callbox/models}
peers=${CALLBOX_PEERS:-$HOME/.cache/callbox/peers/pipecat}
venv=$peers/venv
mkdir -p "$peers" "$out"
out=$(cd "$out" && pwd)

want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
if [[ "$(cat "$venv/.requirements" 2>/dev/null)" != "$want" ]]; then
    echo "==> the Pipecat peer's venv ($venv; llama-cpp-python compiles, ~10 minutes the first time)"
    python3 -m venv "$venv"
    # llama.cpp with the instruction sets callbox's own build uses (AVX2,
    # FMA, F16C: every x86-64 machine here has them), so the two LLMs differ
    # in their server, not their kernels.
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
        "$venv/bin/pip" install -q -r "$here/requirements.txt"
    echo "$want" >"$venv/.requirements"
fi
py=$venv/bin/python

# callbox's models in the shapes the Python engines load: faster-whisper
# wants the CTranslate2 folder whole (the cache holds model.bin in the two
# parts it was published in, and no vocabulary file: CTranslate2's converter
# writes the tokenizer's tokens by id, then Whisper's timestamp tokens up to
# the model's 51,865), Piper a folder of voices.
whisper=$peers/whisper-base
if [[ ! -f $whisper/vocabulary.json ]]; then
    mkdir -p "$whisper"
    cat "$models/ct2/whisper-base/model.bin.part1" "$models/ct2/whisper-base/model.bin.part2" >"$whisper/model.bin"
    cp "$models/ct2/whisper-base/"{config.json,tokenizer.json} "$whisper/"
    "$venv/bin/python" - "$whisper" <<'PY'
import json, sys
from tokenizers import Tokenizer
d = sys.argv[1]
ids = Tokenizer.from_file(f"{d}/tokenizer.json").get_vocab(with_added_tokens=True)
tokens = sorted(ids, key=ids.get)
tokens += ["<|%.2f|>" % (i * 0.02) for i in range(51865 - len(tokens))]
json.dump(tokens, open(f"{d}/vocabulary.json", "w"))
PY
fi
voices=$peers/voices
mkdir -p "$voices"
ln -sf "$models/en_US-joe-medium.onnx" "$voices/en_US-joe-medium.onnx"
ln -sf "$models/en_US-joe-medium.onnx.json" "$voices/en_US-joe-medium.onnx.json"
gguf=$models/SmolLM2-135M-Instruct.Q4_1.gguf

pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
# Waits until a URL answers, or the process behind it has died.
ready() {
    local url=$1 pid=$2 log=$3
    for _ in $(seq 1 600); do
        curl -s -o /dev/null "$url" && return 0 # any HTTP answer
        kill -0 "$pid" 2>/dev/null || { echo "error: it died; its log:" >&2; tail -30 "$log" >&2; exit 1; }
        sleep 0.2
    done
    echo "error: $url did not answer in 120 s; see $log" >&2
    exit 1
}

targets=()
breakdowns=$out/pipecat-api.breakdowns.jsonl
rm -f "$breakdowns"
if [[ ,$stacks, == *,api,* ]]; then
    echo "==> the API stack, faked (callbox fake-apis: Deepgram and Groq with their measured latencies)"
    "$CALLBOX" fake-apis --llm-port 8790 --deepgram-port 8791 >"$out/fake-apis.log" 2>&1 &
    pids+=($!)
    ready http://127.0.0.1:8790/ $! "$out/fake-apis.log"
    export DEEPGRAM_API_KEY=dg_test_key GROQ_API_KEY=gsk_test_key
    "$py" "$here/bot.py" --stack api --port 8765 --llm-url http://127.0.0.1:8790/openai/v1 \
        --deepgram-url http://127.0.0.1:8791 --breakdowns "$breakdowns" >"$out/pipecat-api.log" 2>&1 &
    pids+=($!)
    ready http://127.0.0.1:8765/health $! "$out/pipecat-api.log"
    targets+=(pipecat-api=http://127.0.0.1:8765/)
fi
if [[ ,$stacks, == *,local,* ]]; then
    echo "==> llama.cpp's server on callbox's GGUF, and the Pipecat bot on callbox's models"
    "$py" -m llama_cpp.server --model "$gguf" --host 127.0.0.1 --port 8792 --n_ctx 4096 \
        >"$out/llama-server.log" 2>&1 &
    pids+=($!)
    ready http://127.0.0.1:8792/v1/models $! "$out/llama-server.log"
    "$py" "$here/bot.py" --stack local --port 8766 --llm-url http://127.0.0.1:8792/v1 \
        --whisper "$whisper" --piper-dir "$voices" >"$out/pipecat-local.log" 2>&1 &
    pids+=($!)
    ready http://127.0.0.1:8766/health $! "$out/pipecat-local.log"
    targets=(pipecat-local=http://127.0.0.1:8766/ "${targets[@]}")
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "error: --stacks names neither local nor api" >&2; exit 2; }
if [[ $with_callbox == 1 ]]; then
    # Named by its file: the report calls this stack "callbox".
    cp scripts/bench/local.toml "$out/callbox.toml"
    targets=("$out/callbox.toml" "${targets[@]}")
fi

for n in $callers; do
    echo "==> $n caller(s): ${targets[*]}"
    args=(--callers "$n" --turns "$turns" --rounds "$rounds" --out "$out/callers-$n")
    [[ $n -gt 1 ]] && args+=(--ramp-up-secs 8)
    if [[ ${#targets[@]} -eq 1 ]]; then
        "$CALLBOX" bench --url "${targets[0]}" "${args[@]}"
    else
        "$CALLBOX" bench --compare "${targets[@]}" "${args[@]}"
    fi
done

if [[ -s $breakdowns ]]; then
    "$py" "$here/calibrate.py" "$breakdowns" >"$out/calibration.md"
    cat "$out/calibration.md"
fi
if [[ $smoke == 1 ]]; then
    # Every stack answered every turn of its call, or the smoke run fails.
    "$py" - "$out/callers-1/report.json" <<'PY'
import json, sys
stacks = json.load(open(sys.argv[1]))["stacks"]
bad = [s["label"] for s in stacks if s["quality"]["answered"] < s["quality"]["caller_turns"] or s["quality"]["calls_failed"]]
for s in stacks:
    print(f'smoke: {s["label"]}: {s["quality"]["answered"]} of {s["quality"]["caller_turns"]} turns answered')
sys.exit(f"smoke: not answered by {', '.join(bad)}" if bad else 0)
PY
fi
