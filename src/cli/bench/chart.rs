//! The benchmark's chart, one self-contained SVG file: every turn's latency
//! per stage as dots with its p50–p90 band (one row per stack, so an A/B
//! shows side by side), and the waterfall of each stack's median turn —
//! where its time went after the caller stopped speaking.

use std::fmt::Write;

use super::report::{StackReport, TurnRow, STAGES};

const WIDTH: f64 = 960.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 90.0;
const ROW: f64 = 20.0;
const COLOURS: [&str; 2] = ["#2b6cb0", "#dd6b20"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for an axis and its tick step.
fn axis(max: f64) -> (f64, f64) {
    let max = max.max(1.0);
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

struct Scale {
    from: f64,
    to: f64,
}

impl Scale {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v - self.from) / (self.to - self.from) * (WIDTH - LEFT - RIGHT)
    }
}

fn grid(svg: &mut String, s: &Scale, step: f64, top: f64, bottom: f64) {
    let mut v = (s.from / step).ceil() * step;
    while v <= s.to + 1e-9 {
        let x = s.x(v);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e2e8f0"/><text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle" fill="#4a5568">{v:.0}</text>"##,
            bottom + 12.0
        );
        v += step;
    }
}

pub(crate) fn svg(stacks: &[StackReport]) -> String {
    let mut body = String::new();
    let mut y = 30.0;
    let _ = write!(
        body,
        r#"<text x="12" y="{y}" font-size="16" font-weight="bold">Latency per stage, every turn (ms): dots are turns, the bar spans p50 to p90, the dark line is p50</text>"#
    );
    y += 14.0;
    for (i, s) in stacks.iter().enumerate() {
        let _ = write!(
            body,
            r#"<rect x="{:.0}" y="{y}" width="10" height="10" fill="{}"/><text x="{:.0}" y="{:.0}" font-size="11">{}</text>"#,
            12.0 + i as f64 * 300.0,
            COLOURS[i % 2],
            26.0 + i as f64 * 300.0,
            y + 9.0,
            esc(&s.label)
        );
    }
    y += 20.0;

    // The distributions.
    let stages: Vec<&str> = STAGES
        .iter()
        .map(|(n, _)| *n)
        .chain(std::iter::once("First greeting"))
        .collect();
    let find = |s: &StackReport, name: &str| {
        if name == "First greeting" {
            Some(s.greeting.clone())
        } else {
            s.stage(name).cloned()
        }
    };
    let max = stacks
        .iter()
        .flat_map(|s| stages.iter().filter_map(move |n| find(s, n)))
        .filter_map(|st| st.max)
        .fold(0.0, f64::max);
    let (top, step) = axis(max);
    let scale = Scale { from: 0.0, to: top };
    let rows = stages.len() as f64 * stacks.len() as f64;
    let bottom = y + rows * ROW + 8.0;
    grid(&mut body, &scale, step, y, bottom);
    for name in &stages {
        let _ = write!(
            body,
            r#"<text x="{:.0}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + ROW * stacks.len() as f64 / 2.0 + 4.0,
            esc(name)
        );
        for (i, s) in stacks.iter().enumerate() {
            let c = COLOURS[i % 2];
            let mid = y + ROW / 2.0;
            if let Some(st) = find(s, name) {
                if let (Some(p50), Some(p90)) = (st.p50, st.p90) {
                    let _ = write!(
                        body,
                        r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="10" fill="{c}" opacity="0.25"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{c}" stroke-width="3"/><text x="{:.0}" y="{:.1}" font-size="10" fill="{c}">p50 {p50:.0}</text>"#,
                        scale.x(p50),
                        mid - 5.0,
                        (scale.x(p90) - scale.x(p50)).max(1.0),
                        scale.x(p50),
                        mid - 7.0,
                        scale.x(p50),
                        mid + 7.0,
                        WIDTH - RIGHT + 6.0,
                        mid + 3.0
                    );
                }
                for v in &st.samples {
                    let _ = write!(
                        body,
                        r#"<circle cx="{:.1}" cy="{mid:.1}" r="2.5" fill="{c}" opacity="0.6"/>"#,
                        scale.x(*v)
                    );
                }
            }
            y += ROW;
        }
    }
    y = bottom + 40.0;

    // The median turns' waterfalls.
    for (i, s) in stacks.iter().enumerate() {
        let Some(t) = s.median_turn() else {
            continue;
        };
        y = waterfall(&mut body, y, s, t, COLOURS[i % 2]) + 30.0;
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0}" height="{:.0}" viewBox="0 0 {WIDTH:.0} {:.0}" font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>{body}</svg>
"#,
        y + 10.0,
        y + 10.0
    )
}

/// One turn's stages on the timeline after the caller stopped speaking;
/// returns where the next drawing may start.
fn waterfall(body: &mut String, mut y: f64, s: &StackReport, t: &TurnRow, colour: &str) -> f64 {
    let eos = t.end_of_speech_ms.unwrap_or(0.0);
    let vad = t.vad_stop_ms.unwrap_or(0.0);
    let mut bars: Vec<(&str, f64, f64)> = Vec::new();
    bars.push(("VAD silence window", 0.0, vad));
    if let Some(v) = t.stt_ms {
        bars.push(("STT (transcript)", 0.0, v));
    }
    if let Some(v) = t.smart_turn_ms {
        bars.push(("Smart Turn", vad, vad + v));
    }
    if let (Some(start), Some(v)) = (t.llm_start_ms, t.llm_ttfb_ms) {
        bars.push(("LLM to first token", start, start + v));
    }
    if let (Some(start), Some(llm), Some(audio), Some(tts)) =
        (t.llm_start_ms, t.llm_ttfb_ms, t.tts_audio_ms, t.tts_ttfb_ms)
    {
        bars.push(("LLM to first sentence", start + llm, audio - tts));
        bars.push(("TTS to first audio", audio - tts, audio));
    }
    if let Some(audio) = t.tts_audio_ms {
        bars.push(("Paced out to the phone", audio, eos));
    }
    let from = bars.iter().map(|b| b.1).fold(0.0, f64::min);
    let to = bars.iter().map(|b| b.2).fold(eos, f64::max);
    let (span, step) = axis(to - from);
    let scale = Scale {
        from: (from / step).floor() * step,
        to: (from / step).floor() * step + span.max(step),
    };
    let _ = write!(
        body,
        r#"<text x="12" y="{y:.0}" font-size="15" font-weight="bold" fill="{colour}">{}: the median turn, ms after the caller stopped speaking (End-of-speech {eos:.0} ms, Total {} ms)</text>"#,
        esc(&s.label),
        t.total_ms.map_or("-".into(), |v| format!("{v:.0}"))
    );
    y += 16.0;
    let _ = write!(
        body,
        r##"<text x="12" y="{y:.0}" font-size="11" fill="#4a5568">"{}"</text>"##,
        esc(&t.said)
    );
    y += 10.0;
    let bottom = y + bars.len() as f64 * ROW + 8.0;
    grid(body, &scale, step, y, bottom);
    for (name, a, b) in &bars {
        let _ = write!(
            body,
            r##"<text x="{:.0}" y="{:.1}" font-size="12" text-anchor="end">{}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="12" fill="{colour}" opacity="0.75"/><text x="{:.1}" y="{:.1}" font-size="10" fill="#1a202c">{:.0}</text>"##,
            LEFT - 8.0,
            y + 14.0,
            esc(name),
            scale.x(*a),
            y + 4.0,
            (scale.x(*b) - scale.x(*a)).max(1.0),
            scale.x(*b) + 4.0,
            y + 14.0,
            b - a
        );
        y += ROW;
    }
    let x = scale.x(eos);
    let _ = write!(
        body,
        r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#c53030" stroke-dasharray="4 3"/><text x="{x:.1}" y="{:.1}" font-size="10" fill="#c53030" text-anchor="middle">first audio sent</text>"##,
        bottom - bars.len() as f64 * ROW - 8.0,
        bottom + 24.0
    );
    bottom + 30.0
}
