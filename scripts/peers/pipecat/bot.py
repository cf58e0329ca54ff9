"""The API stack callbox replaces, as a Pipecat telephony bot, for `callbox bench`.

A Twilio Media Streams server (`POST /` answers with TwiML, `WS /ws` takes the
stream) built the way Pipecat's own Twilio examples build one: the runner's
telephony handshake, the Twilio serializer, Silero VAD and the default Smart
Turn v3 stop strategy on the user aggregator, then STT -> LLM -> TTS.

Two stacks, chosen with --stack:

- api:   Deepgram STT, Groq (OpenAI-compatible) LLM, Deepgram TTS, every base
         URL pointed at `callbox fake-apis`, whose latencies follow the API
         stack's measured TTFBs. This is the seed's bot, minus the internet.
- local: faster-whisper on callbox's Whisper weights, llama.cpp's server
         (llama-cpp-python) on callbox's GGUF, Piper in-process with callbox's
         voice. Same models as callbox, so the difference is the pipeline.

Each turn's latency breakdown, as Pipecat's own UserBotLatencyObserver names
it, is appended to --breakdowns as one JSON line, for the calibration against
the seed's table (run.sh summarises them).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import Response
from loguru import logger

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import TTSSpeakFrame
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import (
    FastAPIWebsocketParams,
    FastAPIWebsocketTransport,
)
from pipecat.workers.runner import WorkerRunner

# The opening of callbox's default inbound persona and its greeting, so both
# bots are asked for the same kind of answer.
SYSTEM = (
    "You are Miss Harper, a warm and patient elementary school teacher talking with a child "
    "on the phone. Everything you write is spoken aloud, so answer in one to three short "
    "sentences of plain words, with no lists, symbols, emojis or formatting."
)
GREETING = "Hello, this is Miss Harper. What would you like to learn about today?"


def services(args):
    """The STT, LLM and TTS of the chosen stack."""
    if args.stack == "api":
        from pipecat.services.deepgram.stt import DeepgramSTTService
        from pipecat.services.deepgram.tts import DeepgramTTSService
        from pipecat.services.groq.llm import GroqLLMService

        stt = DeepgramSTTService(
            api_key=os.environ["DEEPGRAM_API_KEY"], base_url=args.deepgram_url
        )
        llm = GroqLLMService(
            api_key=os.environ["GROQ_API_KEY"],
            base_url=args.llm_url,
            settings=GroqLLMService.Settings(
                model="llama-3.3-70b-versatile",
                max_tokens=args.max_tokens,
                system_instruction=SYSTEM,
            ),
        )
        tts = DeepgramTTSService(
            api_key=os.environ["DEEPGRAM_API_KEY"],
            base_url=args.deepgram_url.replace("http", "ws", 1),
            settings=DeepgramTTSService.Settings(voice="aura-2-helena-en"),
        )
        return stt, llm, tts

    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.piper.tts import PiperTTSService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.transcriptions.language import Language

    stt = WhisperSTTService(
        settings=WhisperSTTService.Settings(model=args.whisper, language=Language.EN),
        device="cpu",
    )
    llm = OpenAILLMService(
        api_key="local",
        base_url=args.llm_url,
        settings=OpenAILLMService.Settings(
            model="local", max_tokens=args.max_tokens, system_instruction=SYSTEM
        ),
    )
    tts = PiperTTSService(
        settings=PiperTTSService.Settings(voice=args.piper_voice),
        download_dir=Path(args.piper_dir),
    )
    return stt, llm, tts


def breakdown_writer(path):
    """An on_latency_breakdown handler that appends each turn's parts to `path`."""

    async def write(_observer, breakdown):
        row = {
            "unix": time.time(),
            "total_secs": breakdown.total_secs,
            "measured_from": str(breakdown.measured_from),
            "user_turn_secs": breakdown.user_turn_secs,
            "ttfb": [{"processor": t.processor, "secs": t.duration_secs} for t in breakdown.ttfb],
            "parts": [
                {"label": c.label, "owner": str(c.owner), "secs": c.duration_secs}
                for c in breakdown.contributions
            ],
        }
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")

    return write


async def run_call(websocket: WebSocket, args):
    """One call: Pipecat's telephony handshake, then the pipeline until hang-up."""
    _, call = await parse_telephony_websocket(websocket)
    serializer = TwilioFrameSerializer(
        stream_sid=call["stream_id"],
        call_sid=call["call_id"],
        # No REST credentials: the caller (Twilio or callbox's simulator)
        # ends the call, as in the examples run without hang-up rights.
        params=TwilioFrameSerializer.InputParams(auto_hang_up=False),
    )
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
        ),
    )
    stt, llm, tts = services(args)
    context = LLMContext()
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline(
        [transport.input(), stt, user, llm, tts, transport.output(), assistant]
    )
    latency = UserBotLatencyObserver()
    if args.breakdowns:
        latency.add_event_handler("on_latency_breakdown", breakdown_writer(args.breakdowns))
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(
            # Twilio's 8 kHz, but Whisper hears only 16 kHz and Pipecat's
            # Whisper service does not resample: the serializer does, for
            # the whole pipeline, when it runs at 16 kHz.
            audio_in_sample_rate=8000 if args.stack == "api" else 16000,
            audio_out_sample_rate=8000,
            enable_metrics=True,
            enable_usage_metrics=True,
        ),
        observers=[latency],
    )

    @transport.event_handler("on_client_connected")
    async def greet(_transport, _client):
        await task.queue_frames([TTSSpeakFrame(GREETING)])

    @transport.event_handler("on_client_disconnected")
    async def hang_up(_transport, _client):
        await task.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    await runner.run()


def app(args):
    api = FastAPI()

    @api.post("/")
    async def twiml(request: Request):
        host = request.headers.get("host", f"127.0.0.1:{args.port}")
        body = f'<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://{host}/ws"/></Connect></Response>'
        return Response(content=body, media_type="application/xml")

    @api.websocket("/ws")
    async def ws(websocket: WebSocket):
        await websocket.accept()
        try:
            await run_call(websocket, args)
        except Exception as e:  # one broken call must not stop the server
            logger.exception(f"call failed: {e}")

    @api.get("/health")
    async def health():
        return {"ok": True}

    return api


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stack", choices=["api", "local"], required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--llm-url", help="the OpenAI-compatible base URL (Groq fake or llama.cpp server)")
    p.add_argument("--deepgram-url", help="api: the Deepgram fake's base URL (http://host:port)")
    p.add_argument("--whisper", help="local: a CTranslate2 Whisper model folder")
    p.add_argument("--piper-dir", help="local: the folder holding the Piper voice")
    p.add_argument("--piper-voice", default="en_US-joe-medium")
    p.add_argument("--max-tokens", type=int, default=40)
    p.add_argument("--breakdowns", help="append each turn's latency breakdown here (JSON lines)")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    uvicorn.run(app(args), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
