//! `callbox eval` end to end on the default model set: a set of lines
//! through the real persona and LLM, the scores printed and the report
//! written. Whether a given model answers a given line well is what the
//! benchmark measures, not what a test may assume (replies differ between
//! CPUs), so the lines here are one any reply passes and one none can.

mod common;

use std::process::Command;

const LINES: &str = r#"
sources = "written for this test"
max_secs = 60.0
reject_always = ['<\|']

[[line]]
id = "fact-anything"
category = "fact"
say = "What is the capital of France?"
accept = ['\w']

[[line]]
id = "follow-up-never"
category = "follow-up"
before = [["My name is Tom.", "Nice to meet you, Tom!"]]
say = "What's my name?"
accept = ['\bqqqzzz\b']
"#;

#[test]
fn eval_runs_lines_through_the_llm_and_reports_scores() {
    common::paths(); // provisions the default set
    let dir = std::env::temp_dir().join(format!("callbox-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (lines, report) = (dir.join("lines.toml"), dir.join("report.json"));
    std::fs::write(&lines, LINES).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_callbox"))
        .args(["eval", "--lines"])
        .arg(&lines)
        .arg("--out")
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ANSWER QUALITY"), "{stdout}");
    assert!(stdout.contains("all             1/2"), "{stdout}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["score"], 0.5, "{r:#}");
    assert_eq!(r["lines"][0]["passed"], true, "{r:#}");
    assert!(!r["lines"][0]["reply"].as_str().unwrap().is_empty());
    assert_eq!(r["lines"][1]["passed"], false);
    assert_eq!(r["lines"][1]["failures"][0], "no accepted answer");
    let categories: Vec<&str> = r["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["category"].as_str().unwrap())
        .collect();
    assert_eq!(categories, ["fact", "follow-up"]);
    for k in ["first_token_ms_p50", "reply_ms_p95"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {r:#}");
    }
    assert!(r["llm"].as_str().unwrap().ends_with(".gguf"));
    std::fs::remove_dir_all(&dir).unwrap();
}
