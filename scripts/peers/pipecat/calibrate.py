"""Pipecat's own account of the faked API stack's turns, beside the seed's table.

Reads the JSON lines bot.py wrote (one UserBotLatencyObserver breakdown per
turn) and prints markdown: each service's time to first byte and each named
part of the interval from the caller's last word to the bot's first audio,
p50 and mean, with the figure the seed published where it has one.
"""

import json
import statistics
import sys

# The seed's measured table (Pipecat + Deepgram + Groq + Deepgram, ms).
SEED_TTFB = {"STT": 195, "LLM": 268, "TTS": 23}
SEED_TOTAL = 1050
SERVICES = {"DeepgramSTTService": "STT", "GroqLLMService": "LLM", "DeepgramTTSService": "TTS"}


def service(processor):
    base = processor.split("#")[0]
    return SERVICES.get(base, base)


def p50(v):
    return statistics.median(v) if v else float("nan")


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    # The greeting is measured from the connection, not from speech.
    turns = [r for r in rows if "CLIENT" not in r["measured_from"].upper()]
    ttfb, parts = {}, {}
    for r in turns:
        for t in r["ttfb"]:
            ttfb.setdefault(service(t["processor"]), []).append(t["secs"] * 1000)
        for c in r["parts"]:
            parts.setdefault(c["label"], []).append(c["secs"] * 1000)
    totals = [r["total_secs"] * 1000 for r in turns]
    print(f"Pipecat 1.14.0 on the faked API stack: {len(turns)} turns.\n")
    print("| time to first byte | p50 ms | mean ms | seed ms |")
    print("|---|---:|---:|---:|")
    for name, v in sorted(ttfb.items()):
        seed = SEED_TTFB.get(name, "")
        print(f"| {name} | {p50(v):.0f} | {statistics.mean(v):.0f} | {seed} |")
    print("\n| part of the turn (Pipecat's names) | turns | p50 ms | mean ms |")
    print("|---|---:|---:|---:|")
    for name, v in parts.items():
        print(f"| {name} | {len(v)} | {p50(v):.0f} | {statistics.mean(v):.0f} |")
    if totals:
        print(
            f"| **total** (caller's last word to the bot's first audio) | {len(totals)} "
            f"| {p50(totals):.0f} | {statistics.mean(totals):.0f} |"
        )
        print(f"\nThe seed measured about {SEED_TOTAL} ms on average.")


if __name__ == "__main__":
    main(sys.argv[1])
