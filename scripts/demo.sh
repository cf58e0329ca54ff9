#!/usr/bin/env bash
# The main job on the default models, offline: the caller's question is
# synthesised, detected, transcribed and answered, the answer is spoken, and
# every engine's cost on this machine is measured. Writes WAV files to out/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
mkdir -p out

question="Miss Harper, why do leaves change colour in the autumn?"
echo; echo "==> caller (synthesised): $question"
"$CALLBOX" say "$question" -o out/question.wav
echo; echo "==> voice activity and end of turn"
"$CALLBOX" vad out/question.wav
echo; echo "==> speech to text"
heard=$("$CALLBOX" transcribe --timings out/question.wav)
echo "heard: $heard"
echo; echo "==> the teacher answers"
reply=$("$CALLBOX" chat -m "$heard" | sed -n 's/^bot: //p')
echo "reply: $reply"
"$CALLBOX" say "$reply" -o out/reply.wav
echo; echo "==> what each engine costs here ($(nproc) cores)"
"$CALLBOX" bench-engines --runs 3
echo; echo "wrote out/question.wav and out/reply.wav"
