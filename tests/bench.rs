//! `callbox bench` as a user runs it: the real binary, a real server child
//! process on the default models, simulated callers over the websocket, and
//! for the A/B the API backends against the local fakes of the providers.
//! Only the artefacts are checked — complete and consistent with each
//! other — never how fast anything was.

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn bench(out: &Path, args: &[&str]) -> Value {
    let status = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .arg("--models")
        .arg(&common::store().root)
        .arg("bench")
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .expect("callbox runs");
    assert!(
        status.status.success(),
        "callbox bench {args:?}: {}\n{}",
        status.status,
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(out.join("report.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every figure of a stack agrees with its rows, and the Markdown and the
/// chart carry them.
fn check_stack(s: &Value, turns_expected: usize, md: &str, svg: &str) {
    let rows = s["turns"].as_array().unwrap();
    assert_eq!(rows.len(), turns_expected, "one row per caller turn");
    let q = &s["quality"];
    assert_eq!(q["caller_turns"].as_u64().unwrap() as usize, rows.len());
    let answered = rows.iter().filter(|r| r["answered"] == true).count();
    assert_eq!(q["answered"].as_u64().unwrap() as usize, answered);
    assert_eq!(
        q["unanswered"].as_u64().unwrap() as usize,
        rows.len() - answered
    );
    assert!(answered > 0, "no turn answered: {s}");
    let wer = f(&q["wer"]);
    assert!((0.0..=1.0).contains(&wer), "{wer}");
    let cut_offs = rows.iter().filter(|r| r["cut_off"] == true).count();
    assert_eq!(q["cut_offs"].as_u64().unwrap() as usize, cut_offs);

    let key = |stage: &str| match stage {
        "Total" => "total_ms",
        "End-of-speech" => "end_of_speech_ms",
        "Caller-side" => "caller_ms",
        "VAD stop" => "vad_stop_ms",
        "STT" => "stt_ms",
        "Smart Turn" => "smart_turn_ms",
        "LLM TTFB" => "llm_ttfb_ms",
        "TTS TTFB" => "tts_ttfb_ms",
        other => panic!("unknown stage {other}"),
    };
    let stages = s["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 8);
    for st in stages {
        let name = st["stage"].as_str().unwrap();
        let mut values: Vec<f64> = rows.iter().filter_map(|r| r[key(name)].as_f64()).collect();
        values.sort_by(|a, b| a.total_cmp(b));
        let mut samples: Vec<f64> = st["samples"].as_array().unwrap().iter().map(f).collect();
        samples.sort_by(|a, b| a.total_cmp(b));
        assert_eq!(values, samples, "{name}: the samples are the rows'");
        assert_eq!(st["n"].as_u64().unwrap() as usize, values.len());
        assert!(!values.is_empty(), "{name} has no sample");
        let (p50, p90, p95, p99, max) = (
            f(&st["p50"]),
            f(&st["p90"]),
            f(&st["p95"]),
            f(&st["p99"]),
            f(&st["max"]),
        );
        assert!(
            values[0] <= p50 && p50 <= p90 && p90 <= p95 && p95 <= p99 && p99 <= max,
            "{name}: {p50} {p90} {p95} {p99} {max}"
        );
        assert_eq!(max, *values.last().unwrap());
        assert!(
            md.contains(&format!(
                "| {name} | {} | {p50:.0} | {p90:.0} | {p95:.0} | {p99:.0} |",
                values.len()
            )),
            "{name} missing from the Markdown"
        );
    }
    // Total and End-of-speech differ by the VAD's stop window, row by row.
    for r in rows.iter().filter(|r| r["total_ms"].is_number()) {
        let (t, e, v) = (
            f(&r["total_ms"]),
            f(&r["end_of_speech_ms"]),
            f(&r["vad_stop_ms"]),
        );
        assert!((e - t - v).abs() < 1e-6 && e >= t, "{r}");
    }
    let greeting = &s["greeting"];
    assert_eq!(
        greeting["n"].as_u64().unwrap() as usize,
        s["calls"].as_array().unwrap().len()
    );
    let label = s["label"].as_str().unwrap();
    assert!(md.contains(&format!("## {label}")));
    assert!(
        svg.contains(&format!("{label}: the median turn")),
        "{label}"
    );
    let cost = &s["server"];
    assert!(f(&cost["rss_mib_max"]) > 0.0 && f(&cost["cpu_cores_mean"]) > 0.0);
    assert_eq!(cost["exit_status"], 0);
}

fn dots(svg: &str) -> usize {
    svg.matches("<circle").count()
}

fn samples(s: &Value) -> usize {
    let stages: usize = s["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["n"].as_u64().unwrap() as usize)
        .sum();
    stages + s["greeting"]["n"].as_u64().unwrap() as usize
}

#[test]
fn two_callers_produce_every_artefact_and_they_agree() {
    let out = std::env::temp_dir().join(format!("callbox-bench-{}", std::process::id()));
    let r = bench(
        &out,
        &["--callers", "2", "--ramp-up-secs", "2", "--turns", "2"],
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(r["callers"], 2);
    assert_eq!(r["script"].as_array().unwrap().len(), 2);
    let stacks = r["stacks"].as_array().unwrap();
    assert_eq!(stacks.len(), 1);
    check_stack(&stacks[0], 4, &md, &svg);
    assert_eq!(dots(&svg), samples(&stacks[0]), "a dot per sample");
    // The callers' calls are the server's: each has its trace.
    for c in stacks[0]["calls"].as_array().unwrap() {
        let sid = c["call_sid"].as_str().unwrap();
        assert!(
            out.join(format!("local/traces/{sid}.json")).exists(),
            "{sid}"
        );
        assert!(c["error"].is_null(), "{c}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn an_ab_run_against_the_fake_api_stack_reports_both_side_by_side() {
    let out = std::env::temp_dir().join(format!("callbox-ab-{}", std::process::id()));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench");
    let (a, b) = (dir.join("local.toml"), dir.join("api-stack.toml"));
    let r = bench(
        &out,
        &[
            "--compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--fake-apis",
            "--turns",
            "2",
        ],
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let svg = std::fs::read_to_string(out.join("chart.svg")).unwrap();
    let stacks = r["stacks"].as_array().unwrap();
    let labels: Vec<&str> = stacks
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["local", "api-stack"]);
    for s in stacks {
        check_stack(s, 2, &md, &svg);
    }
    assert_eq!(dots(&svg), samples(&stacks[0]) + samples(&stacks[1]));
    assert!(md.contains("## local against api-stack (ms)"), "{md}");
    for name in ["Total", "End-of-speech", "STT", "LLM TTFB", "TTS TTFB"] {
        assert!(
            md.lines()
                .any(|l| l.starts_with(&format!("| {name} |")) && l.matches('|').count() == 7),
            "{name} row missing from the side-by-side table"
        );
    }
    // The fakes' latencies are reported, and the second stack really ran
    // on the API backends, as its traces name them.
    assert_eq!(r["fake_apis"]["stt_ms"], 195);
    let engine = |s: &Value, e: &str| {
        s["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["engine"] == e)
            .map(|m| m["file"].as_str().unwrap().to_string())
    };
    assert_eq!(engine(&stacks[1], "stt").as_deref(), Some("nova-3"));
    assert_eq!(
        engine(&stacks[1], "llm").as_deref(),
        Some("llama-3.3-70b-versatile")
    );
    assert_eq!(
        engine(&stacks[1], "tts").as_deref(),
        Some("aura-2-thalia-en")
    );
    assert_ne!(engine(&stacks[0], "stt").as_deref(), Some("nova-3"));
    // The summary the GPU script collects: a row per stack with the report's
    // p50 and p95 of Total and End-of-speech.
    let summary = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .arg("bench-summary")
        .arg(out.join("report.json"))
        .output()
        .unwrap();
    assert!(summary.status.success());
    let rows = String::from_utf8(summary.stdout).unwrap();
    assert_eq!(rows.lines().count(), 2, "{rows}");
    for (s, row) in stacks.iter().zip(rows.lines()) {
        let stat = |name: &str, p: &str| {
            let st = s["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|st| st["stage"] == name)
                .unwrap();
            format!("{:.0}", f(&st[p]))
        };
        let expected = format!(
            "| 1 | {} | 2 | {} | {} | {} | {} |",
            s["label"].as_str().unwrap(),
            stat("Total", "p50"),
            stat("Total", "p95"),
            stat("End-of-speech", "p50"),
            stat("End-of-speech", "p95"),
        );
        assert!(row.starts_with(&expected), "{row}\nexpected {expected}");
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// Against a server that is already running (here one in the test's own
/// process): the caller side from the callers, the stages from the traces
/// folder it writes, no server cost (it is not the bench's child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_measured_through_its_url_and_traces() {
    let traces = std::env::temp_dir().join(format!("callbox-bench-url-{}", std::process::id()));
    let dir = traces.clone();
    let (_state, addr) = common::server::start(move |c| c.observe.traces_dir = Some(dir)).await;
    let out = std::env::temp_dir().join(format!("callbox-bench-url-out-{}", std::process::id()));
    let (url, t, o) = (format!("ws://{addr}/ws"), traces.clone(), out.clone());
    let r = tokio::task::spawn_blocking(move || {
        bench(
            &o,
            &[
                "--url",
                &url,
                "--auth-token",
                common::server::AUTH_TOKEN,
                "--traces",
                t.to_str().unwrap(),
                "--turns",
                "1",
            ],
        )
    })
    .await
    .unwrap();
    let s = &r["stacks"][0];
    assert!(
        s["server"].is_null(),
        "no cost for a server it did not start"
    );
    let rows = s["turns"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["answered"], true, "{s}");
    for key in [
        "caller_ms",
        "total_ms",
        "stt_ms",
        "llm_ttfb_ms",
        "tts_ttfb_ms",
    ] {
        assert!(rows[0][key].is_number(), "{key}: {}", rows[0]);
    }
    let sid = s["calls"][0]["call_sid"].as_str().unwrap();
    assert!(traces.join(format!("{sid}.json")).exists());
    let _ = std::fs::remove_dir_all(&out);
}
