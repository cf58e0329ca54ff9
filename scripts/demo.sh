#!/usr/bin/env bash
# The main job, offline, on the default models: starts the server, calls it
# with a simulated Twilio caller speaking ten scripted questions in real
# time, and prints the conversation and the per-turn latency table. Writes
# the call recording to out/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
"$CALLBOX" demo "$@"
