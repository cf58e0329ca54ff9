//! What a benchmark found, per stack: one row per caller turn, the stages'
//! distributions, conversation quality and the server's cost; written as
//! JSON (everything) and Markdown (the tables a person reads).

use serde::{Deserialize, Serialize};

use crate::cli::percentile;
use crate::events::TurnRecord;
use crate::stack::ModelInfo;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BenchReport {
    pub(crate) machine: String,
    /// Seconds since the Unix epoch when the run began.
    pub(crate) started_unix: u64,
    pub(crate) callers: usize,
    pub(crate) rounds: usize,
    pub(crate) ramp_up_secs: f64,
    /// The caller's turns, as said (or the WAV file's reference).
    pub(crate) script: Vec<String>,
    /// The fake providers' latencies, when the API stack was faked.
    pub(crate) fake_apis: Option<crate::fakes::Latency>,
    pub(crate) stacks: Vec<StackReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StackReport {
    pub(crate) label: String,
    /// The configuration file, if any (else the built-in defaults).
    pub(crate) config: Option<String>,
    /// What wrote, heard and spoke, as the server's traces name them.
    pub(crate) models: Vec<ModelInfo>,
    pub(crate) wall_secs: f64,
    pub calls: Vec<CallRow>,
    pub turns: Vec<TurnRow>,
    pub(crate) stages: Vec<StageStats>,
    pub(crate) greeting: StageStats,
    pub(crate) quality: Quality,
    pub server: Option<ServerCost>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CallRow {
    pub(crate) caller: usize,
    pub(crate) round: usize,
    pub call_sid: String,
    /// The call failed on the caller's side (connection, protocol).
    pub(crate) error: Option<String>,
    /// Call start → first greeting audio received.
    pub greeting_ms: Option<f64>,
    /// 20 ms ticks when the phone's buffer ran dry mid-sentence.
    pub(crate) late_frames: usize,
    /// Replies the server started (a caller turn split in two gets two).
    pub(crate) replies: usize,
    /// What the server understood, all turns together.
    pub(crate) heard: String,
}

/// One caller turn and the server's reply to it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TurnRow {
    pub(crate) caller: usize,
    pub(crate) round: usize,
    pub turn: usize,
    pub said: String,
    /// The server's transcript of the reply's turn.
    pub(crate) heard: Option<String>,
    /// The bot's reply as the caller heard it, transcribed by our STT
    /// after the calls: what any bot said, ours or not.
    #[serde(default)]
    pub(crate) reply: Option<String>,
    pub(crate) answered: bool,
    /// The reply began while the caller was still speaking.
    pub(crate) cut_off: bool,
    /// The rule that ended the turn on the server.
    #[serde(default)]
    pub(crate) turn_end: Option<crate::events::TurnEnd>,
    /// Caller side: end of the caller's audio → first bot audio received.
    pub(crate) caller_ms: Option<f64>,
    /// Server side, as the latency table defines them.
    pub total_ms: Option<f64>,
    pub end_of_speech_ms: Option<f64>,
    /// End of speech → the VAD's stop (its silence window).
    pub(crate) vad_stop_ms: Option<f64>,
    pub stt_ms: Option<f64>,
    pub smart_turn_ms: Option<f64>,
    pub llm_ttfb_ms: Option<f64>,
    pub tts_ttfb_ms: Option<f64>,
    /// The reply's timeline, ms after the end of speech: LLM request,
    /// first TTS audio, first frame sent.
    pub(crate) llm_start_ms: Option<f64>,
    pub(crate) tts_audio_ms: Option<f64>,
}

/// How to read a stage's figure from a row.
pub(crate) type Stage = (&'static str, fn(&TurnRow) -> Option<f64>);

/// The stages in table order. Caller-side leads: it is the one figure
/// every target has, ours or any other Media Streams server.
pub(crate) const STAGES: [Stage; 8] = [
    ("Caller-side", |t| t.caller_ms),
    ("Total", |t| t.total_ms),
    ("End-of-speech", |t| t.end_of_speech_ms),
    ("VAD stop", |t| t.vad_stop_ms),
    ("STT", |t| t.stt_ms),
    ("Smart Turn", |t| t.smart_turn_ms),
    ("LLM TTFB", |t| t.llm_ttfb_ms),
    ("TTS TTFB", |t| t.tts_ttfb_ms),
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StageStats {
    pub(crate) stage: String,
    pub(crate) n: usize,
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    /// The GPU figures are quoted at p95 (older reports lack it).
    #[serde(default)]
    pub(crate) p95: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) mean: Option<f64>,
    pub(crate) max: Option<f64>,
    pub samples: Vec<f64>,
}

impl StageStats {
    pub(crate) fn of(stage: &str, samples: Vec<f64>) -> Self {
        let some = |v: f64| (!samples.is_empty()).then_some(v);
        Self {
            stage: stage.to_string(),
            n: samples.len(),
            p50: some(percentile(&samples, 0.5)),
            p90: some(percentile(&samples, 0.9)),
            p95: some(percentile(&samples, 0.95)),
            p99: some(percentile(&samples, 0.99)),
            mean: some(samples.iter().sum::<f64>() / samples.len().max(1) as f64),
            max: samples.iter().copied().reduce(f64::max),
            samples,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Quality {
    pub(crate) caller_turns: usize,
    pub(crate) answered: usize,
    /// Caller turns the bot never answered.
    pub(crate) unanswered: usize,
    /// Replies that began while the caller was mid-utterance.
    pub(crate) cut_offs: usize,
    /// Turns that waited out the silence fallback (`call.turn_timeout_secs`).
    #[serde(default)]
    pub(crate) fallback_waits: usize,
    /// Backchannels over the bot that it went on through (server side).
    #[serde(default)]
    pub backchannels: usize,
    /// Replies the caller interrupted (server side, cut-offs excluded).
    #[serde(default)]
    pub(crate) barge_ins: usize,
    /// Word error rate of the server's transcripts against the script,
    /// over all calls (None when no turn has reference text).
    pub(crate) wer: Option<f64>,
    pub(crate) late_frames: usize,
    pub(crate) calls_failed: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServerCost {
    /// CPU time over wall time while calls ran, in cores.
    pub(crate) cpu_cores_mean: f64,
    /// The busiest second.
    pub(crate) cpu_cores_max: f64,
    pub(crate) rss_mib_idle: f64,
    pub(crate) rss_mib_max: f64,
    pub(crate) exit_status: Option<i32>,
}

impl StackReport {
    pub(crate) fn stage(&self, name: &str) -> Option<&StageStats> {
        self.stages.iter().find(|s| s.stage == name)
    }

    /// The answered turn whose Total is the median: the waterfall's turn.
    pub(crate) fn median_turn(&self) -> Option<&TurnRow> {
        let mut rows: Vec<&TurnRow> = self.turns.iter().filter(|t| t.total_ms.is_some()).collect();
        rows.sort_by(|a, b| {
            a.total_ms
                .unwrap_or(0.0)
                .total_cmp(&b.total_ms.unwrap_or(0.0))
        });
        // The same rank as the p50 of the tables.
        let at = (rows.len().saturating_sub(1) as f64 * 0.5).round() as usize;
        rows.get(at).copied()
    }
}

/// A caller turn's row from what the caller saw and the server's record of
/// the reply it started (if it matched one).
pub(crate) fn turn_row(
    (caller, round, turn): (usize, usize, usize),
    said: &str,
    sim: &crate::sim::SimTurnReport,
    server: Option<&TurnRecord>,
) -> TurnRow {
    let mut row = TurnRow {
        caller,
        round,
        turn,
        said: said.to_string(),
        answered: sim.latency_ms.is_some(),
        cut_off: sim.audio_while_speaking > 0,
        caller_ms: sim.latency_ms,
        ..TurnRow::default()
    };
    if let Some(r) = server {
        row.heard = Some(r.user_text.clone());
        row.turn_end = r.turn_end;
        row.total_ms = r.total_ms;
        row.end_of_speech_ms = r.end_of_speech_ms;
        row.vad_stop_ms = r
            .end_of_speech_ms
            .zip(r.total_ms)
            .map(|(e, t)| (e - t).max(0.0));
        row.stt_ms = r.stt_ms;
        row.smart_turn_ms = r.smart_turn_ms;
        row.llm_ttfb_ms = r.llm_ttfb_ms;
        row.tts_ttfb_ms = r.tts_ttfb_ms;
        // Where the caller stopped, on the server's clock of the call.
        if let (Some(frame), Some(eos)) = (r.first_frame_at_ms, r.end_of_speech_ms) {
            let speech_end = frame - eos;
            row.llm_start_ms = Some(r.reply_started_at_ms - speech_end);
            row.tts_audio_ms = r.first_audio_at_ms.map(|a| a - speech_end);
        }
    }
    row
}

/// The server's reply to a caller turn: the record whose first frame left
/// the server closest to when the caller received the first audio.
pub(crate) fn match_reply(
    records: &[TurnRecord],
    first_audio_at_ms: Option<f64>,
) -> Option<&TurnRecord> {
    let at = first_audio_at_ms?;
    records
        .iter()
        .filter(|r| r.kind == crate::events::TurnKind::Turn)
        .filter_map(|r| Some((r, (r.first_frame_at_ms? - at).abs())))
        .filter(|(_, d)| *d < 1000.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, _)| r)
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn stage_table(s: &StackReport) -> String {
    let mut out = String::from(
        "| stage | n | p50 | p90 | p95 | p99 | mean | max |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for st in s.stages.iter().chain(std::iter::once(&s.greeting)) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            st.stage,
            st.n,
            ms(st.p50),
            ms(st.p90),
            ms(st.p95),
            ms(st.p99),
            ms(st.mean),
            ms(st.max)
        ));
    }
    out
}

fn quality_lines(s: &StackReport) -> String {
    let q = &s.quality;
    let mut out = format!(
        "- caller turns answered: {} of {} ({} unanswered); replies that cut the caller off: {}\n\
         - turns that waited the silence fallback: {}; backchannels the bot went on through: {}; real barge-ins: {}\n\
         - STT word error rate against the script: {}\n\
         - late bot audio (20 ms ticks the phone's buffer ran dry mid-sentence): {}; calls failed: {}\n",
        q.answered,
        q.caller_turns,
        q.unanswered,
        q.cut_offs,
        q.fallback_waits,
        q.backchannels,
        q.barge_ins,
        q.wer.map_or("-".into(), |w| format!("{:.1} %", w * 100.0)),
        q.late_frames,
        q.calls_failed,
    );
    if let Some(c) = &s.server {
        out.push_str(&format!(
            "- server: CPU {:.2} cores on average, {:.2} in the busiest second; RSS {:.0} MiB idle, {:.0} MiB at most; exit status {}\n",
            c.cpu_cores_mean,
            c.cpu_cores_max,
            c.rss_mib_idle,
            c.rss_mib_max,
            c.exit_status.map_or("killed".into(), |c| c.to_string())
        ));
    }
    out
}

fn turn_rows(s: &StackReport) -> String {
    let mut out = String::from(
        "| caller | call | turn | said | heard | reply | caller-side | Total | End-of-speech | VAD stop | STT | Smart Turn | LLM TTFB | TTS TTFB | turn end | cut off |\n\
         |---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    for t in &s.turns {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.caller,
            t.round,
            t.turn,
            t.said.replace('|', "/"),
            t.heard.as_deref().unwrap_or("-").replace('|', "/"),
            t.reply.as_deref().unwrap_or("(no reply)").replace('|', "/"),
            ms(t.caller_ms),
            ms(t.total_ms),
            ms(t.end_of_speech_ms),
            ms(t.vad_stop_ms),
            ms(t.stt_ms),
            ms(t.smart_turn_ms),
            ms(t.llm_ttfb_ms),
            ms(t.tts_ttfb_ms),
            t.turn_end.map_or("", |e| e.as_str()),
            if t.cut_off { "yes" } else { "" }
        ));
    }
    out
}

fn models_line(s: &StackReport) -> String {
    let m: Vec<String> = s
        .models
        .iter()
        .filter(|m| m.engine != "mel" && m.engine != "onnxruntime")
        .map(|m| format!("{} {}", m.engine, m.file))
        .collect();
    m.join(", ")
}

pub(crate) fn markdown(r: &BenchReport) -> String {
    let mut out = format!(
        "# callbox bench\n\nMachine: {}. {} caller(s) at once, {} call(s) each, ramp-up {:.0} s; {} turns a call.\n",
        r.machine,
        r.callers,
        r.rounds,
        r.ramp_up_secs,
        r.script.len()
    );
    if let Some(l) = &r.fake_apis {
        out.push_str(&format!(
            "\nAPI providers faked locally: STT {} ms after Finalize, LLM {} ms to the first token ({} ms a token after), TTS {} ms to the first byte, each plus a {} ms network round trip.\n",
            l.stt_ms, l.llm_ms, l.llm_token_ms, l.tts_ms, l.network_ms
        ));
    }
    if let [a, b] = r.stacks.as_slice() {
        out.push_str(&format!(
            "\n## {} against {} (ms)\n\n| stage | {a} p50 | {a} p90 | {b} p50 | {b} p90 | p50 difference |\n|---|---:|---:|---:|---:|---:|\n",
            a.label,
            b.label,
            a = a.label,
            b = b.label
        ));
        for (name, _) in STAGES {
            let (x, y) = (a.stage(name), b.stage(name));
            let p = |s: Option<&StageStats>, f: fn(&StageStats) -> Option<f64>| ms(s.and_then(f));
            let diff = x
                .and_then(|x| x.p50)
                .zip(y.and_then(|y| y.p50))
                .map_or("-".into(), |(x, y)| format!("{:+.0}", y - x));
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {diff} |\n",
                p(x, |s| s.p50),
                p(x, |s| s.p90),
                p(y, |s| s.p50),
                p(y, |s| s.p90),
            ));
        }
        let q = |s: &StackReport| {
            format!(
                "{} of {} answered, {} cut-offs, WER {}",
                s.quality.answered,
                s.quality.caller_turns,
                s.quality.cut_offs,
                s.quality
                    .wer
                    .map_or("-".into(), |w| format!("{:.1} %", w * 100.0))
            )
        };
        out.push_str(&format!("| conversation | {} | | {} | | |\n", q(a), q(b)));
    }
    for s in &r.stacks {
        out.push_str(&format!(
            "\n## {}\n\nConfiguration: {}. Models: {}. Wall time {:.0} s.\n\n### Latency per stage (ms)\n\n{}\n### Conversation and cost\n\n{}\n### Every turn (ms)\n\n{}",
            s.label,
            s.config.as_deref().unwrap_or("built-in defaults"),
            models_line(s),
            s.wall_secs,
            stage_table(s),
            quality_lines(s),
            turn_rows(s)
        ));
    }
    out.push_str(
        "\nTotal: the VAD's \"user stopped speaking\" → first bot audio sent. End-of-speech: the end of the caller's speech (the VAD's stop minus its silence window) → the same frame. \
         Caller-side: the end of the caller's audio → the first bot audio the caller received. First greeting: call start → first greeting audio received. \
         Heard: the server's transcript of the turn (servers of ours). Reply: what the bot said, as the caller heard it, through our Whisper.\n",
    );
    out
}

/// One Markdown row per stack of a saved report: callers, the stack, turns,
/// p50 and p95 of Total and End-of-speech, turns answered. What the GPU benchmark
/// script collects over its loads (`callbox bench-summary`).
pub(crate) fn summary_rows(report: &BenchReport) -> String {
    let mut out = String::new();
    for s in &report.stacks {
        let find = |name: &str| s.stages.iter().find(|st| st.stage == name);
        let p = |name: &str, f: fn(&StageStats) -> Option<f64>| ms(find(name).and_then(f));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} of {} |\n",
            report.callers,
            s.label,
            find("Total").map_or(0, |st| st.n),
            p("Total", |st| st.p50),
            p("Total", |st| st.p95),
            p("End-of-speech", |st| st.p50),
            p("End-of-speech", |st| st.p95),
            s.quality.answered,
            s.quality.caller_turns,
        ));
    }
    out
}
