// The browser demo: the microphone to the server's browser transport, the
// bot's audio back, and the call's own events drawn as a transcript and a
// per-turn waterfall. Everything comes from this server; nothing else is
// fetched.
"use strict";

const API_STACK_MS = 1050;
const $ = (id) => document.getElementById(id);

let call = null;

$("call").addEventListener("click", () => (call ? call.hangUp() : startCall()));

function status(text) {
  $("status").textContent = text;
}

async function startCall() {
  $("call").disabled = true;
  status("Connecting…");
  try {
    call = await Call.open();
    $("call").textContent = "Hang up";
    $("call").classList.add("live");
  } catch (e) {
    status(`Could not start the call: ${e.message || e}`);
    call = null;
  } finally {
    $("call").disabled = false;
  }
}

class Call {
  static async open() {
    // The transport takes 16 kHz; the browser resamples the microphone
    // into a context running at that rate.
    const ctx = new AudioContext({ sampleRate: 16000 });
    await ctx.audioWorklet.addModule("/demo/microphone.js");
    const media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/demo/ws`);
    ws.binaryType = "arraybuffer";
    await new Promise((ok, fail) => {
      ws.onopen = ok;
      ws.onerror = () => fail(new Error("the server refused the call"));
    });
    return new Call(ctx, media, ws);
  }

  constructor(ctx, media, ws) {
    this.ctx = ctx;
    this.media = media;
    this.ws = ws;
    this.speaker = new Speaker(ctx, (name) => this.send({ event: "mark", name }));
    this.view = new CallView();
    this.mic = new AudioWorkletNode(ctx, "microphone", { numberOfOutputs: 0 });
    this.mic.port.onmessage = (e) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(e.data);
    };
    this.source = ctx.createMediaStreamSource(media);
    this.source.connect(this.mic);
    ws.onmessage = (e) => this.receive(e.data);
    ws.onclose = () => this.closed();
    status("On the call: say something");
  }

  send(msg) {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  receive(data) {
    if (data instanceof ArrayBuffer) {
      this.speaker.play(new Int16Array(data), this.rate || 8000);
      return;
    }
    const msg = JSON.parse(data);
    switch (msg.event) {
      case "start":
        this.rate = msg.rate;
        break;
      case "mark":
        this.speaker.mark(msg.name);
        break;
      case "clear":
        this.speaker.clear();
        break;
      case "observe":
        this.view.observe(msg);
        break;
      case "ended":
        this.view.ended(msg);
        break;
    }
  }

  hangUp() {
    status("Hanging up…");
    this.send({ event: "stop" });
    this.stopMicrophone();
  }

  stopMicrophone() {
    this.source.disconnect();
    this.media.getTracks().forEach((t) => t.stop());
  }

  closed() {
    this.stopMicrophone();
    this.speaker.close();
    this.ctx.close();
    call = null;
    $("call").textContent = "Call";
    $("call").classList.remove("live");
  }
}

// Plays the bot's audio gaplessly and tells the server when each mark's
// audio has been heard; `clear` (barge-in) silences it at once and returns
// every pending mark, as Twilio does.
class Speaker {
  constructor(ctx, onMark) {
    this.ctx = ctx;
    this.onMark = onMark;
    this.playhead = 0;
    this.playing = new Set();
    this.marks = [];
    this.timer = setInterval(() => this.passMarks(), 20);
  }

  play(pcm, rate) {
    const buffer = this.ctx.createBuffer(1, pcm.length, rate);
    const out = buffer.getChannelData(0);
    for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 32768;
    const src = this.ctx.createBufferSource();
    src.buffer = buffer;
    src.connect(this.ctx.destination);
    const at = Math.max(this.playhead, this.ctx.currentTime + 0.03);
    src.start(at);
    this.playhead = at + buffer.duration;
    this.playing.add(src);
    src.onended = () => this.playing.delete(src);
  }

  mark(name) {
    this.marks.push({ name, at: this.playhead });
  }

  passMarks() {
    while (this.marks.length && this.marks[0].at <= this.ctx.currentTime) {
      this.onMark(this.marks.shift().name);
    }
  }

  close() {
    this.clear();
    clearInterval(this.timer);
  }

  clear() {
    for (const src of this.playing) src.stop();
    this.playing.clear();
    this.playhead = 0;
    while (this.marks.length) this.onMark(this.marks.shift().name);
  }
}

// The transcript and the waterfall, from the call's observer events.
class CallView {
  constructor() {
    $("transcript").replaceChildren();
    $("waterfall").replaceChildren();
    $("downloads").hidden = true;
    this.records = [];
    this.heard = null; // the caller's words not yet answered
    this.lines = new Map(); // turn → its lines
  }

  line(who, text, pending) {
    const li = document.createElement("li");
    li.className = who + (pending ? " pending" : "");
    li.textContent = text;
    $("transcript").append(li);
    li.scrollIntoView({ block: "nearest" });
    return li;
  }

  observe(e) {
    switch (e.type) {
      case "transcript":
        if (!this.heard) this.heard = this.line("user", "", true);
        this.heard.textContent = e.text || "…";
        break;
      case "bot_started_speaking": {
        const user = e.kind === "turn" ? this.heard : null;
        if (user) user.classList.remove("pending");
        this.heard = null;
        const bot = this.line("bot", "…", true);
        this.lines.set(e.turn, { user, bot });
        status(e.total_ms != null ? `Answered ${Math.round(e.total_ms)} ms after you stopped` : "The bot is speaking");
        break;
      }
      case "turn_finished":
        this.finished(e.record);
        break;
      case "error":
        status(`${e.kind}: ${e.message}`);
        break;
      case "call_ended":
        status(`Call ended (${e.summary.ended_by})`);
        break;
    }
  }

  finished(r) {
    const lines = this.lines.get(r.index) || { bot: this.line("bot", "", false) };
    if (lines.user && r.user_text) lines.user.textContent = r.user_text;
    lines.bot.textContent = r.heard_text || r.bot_text;
    lines.bot.classList.remove("pending");
    if (r.interrupted) lines.bot.classList.add("cut");
    if (r.total_ms != null && r.end_of_speech_ms != null && r.first_frame_at_ms != null) {
      this.records.push(r);
      this.drawWaterfall();
    }
  }

  // One row per answered turn; times in ms from the end of the caller's
  // speech, on one scale for all rows.
  drawWaterfall() {
    const rows = this.records.map(stages);
    const span = Math.max(API_STACK_MS * 1.1, ...rows.flatMap((s) => s.map((x) => x.to)));
    const pct = (ms) => `${(100 * Math.max(0, ms)) / span}%`;
    const el = $("waterfall");
    el.replaceChildren();
    this.records.forEach((r, i) => {
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.turn = r.index;
      const said = document.createElement("div");
      said.className = "said";
      said.textContent = `“${r.user_text}”`;
      row.append(said);
      for (const s of rows[i]) {
        const bar = document.createElement("div");
        bar.className = `bar ${s.key}`;
        bar.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span><span class="api"></span></span><span class="ms"></span>';
        bar.querySelector(".name").textContent = s.name;
        const fill = bar.querySelector(".fill");
        fill.style.left = pct(s.from);
        fill.style.width = pct(s.to - Math.max(0, s.from));
        bar.querySelector(".api").style.left = pct(API_STACK_MS);
        bar.querySelector(".ms").textContent = `${Math.round(s.to - s.from)} ms`;
        row.append(bar);
      }
      el.append(row);
    });
  }

  ended(msg) {
    if (msg.error) status(msg.error);
    const links = [
      ["recording", msg.recording],
      ["trace", msg.trace],
    ];
    for (const [id, href] of links) {
      const a = $(id);
      a.hidden = !href;
      if (href) a.href = href;
    }
    $("downloads").hidden = !(msg.recording || msg.trace);
  }
}

// A turn's stages as spans on its timeline (0 = the caller stopped
// speaking). Stages may overlap: STT and the reply start before the VAD
// has confirmed the silence.
function stages(r) {
  const eosAt = r.first_frame_at_ms - r.end_of_speech_ms;
  const stopAt = r.end_of_speech_ms - r.total_ms;
  const span = (key, name, from, ms) => ({ key, name, from, to: from + (ms ?? 0) });
  const out = [
    span("eos", "End-of-speech", 0, r.end_of_speech_ms),
    span("total", "Total", stopAt, r.total_ms),
  ];
  if (r.stt_ms != null) out.push(span("stt", "STT", 0, r.stt_ms));
  if (r.smart_turn_ms != null) out.push(span("turn", "Smart Turn", stopAt, r.smart_turn_ms));
  if (r.llm_ttfb_ms != null) out.push(span("llm", "LLM", r.reply_started_at_ms - eosAt, r.llm_ttfb_ms));
  if (r.tts_ttfb_ms != null && r.first_audio_at_ms != null) {
    out.push(span("tts", "TTS", r.first_audio_at_ms - r.tts_ttfb_ms - eosAt, r.tts_ttfb_ms));
  }
  return out;
}
