//! `callbox eval --tools FILE`: how well the configured LLM chooses the
//! owner's tools. Each scripted caller line goes through what a call does
//! with it — the built-in intents first, then the model's
//! grammar-constrained choice among the file's `[[tools]]` — and the choice
//! is checked against the line's tool and arguments. Prints the score and
//! the time the choice adds to a turn; writes a JSON report.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{percentile, Cli};
use crate::config::Config;
use crate::engines::device::Engine;
use crate::engines::local::llama::choose_tool;
use crate::engines::{ChatMessage, Role};
use crate::stack::{self, LoadTimes};
use crate::tools::http::{HttpTool, ToolSet};
use crate::tools::intent::{intent, Intent};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolLines {
    system: String,
    greeting: String,
    tools: Vec<HttpTool>,
    lines: Vec<ToolLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolLine {
    say: String,
    /// A tool's name, `none`, `end_call` or `transfer_call`.
    tool: String,
    #[serde(default)]
    arguments: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct LineReport<'a> {
    say: &'a str,
    expected: &'a str,
    chosen: String,
    arguments: Value,
    right_tool: bool,
    right_arguments: bool,
    /// The model's choice (none for the built-in intents).
    choice_ms: Option<f64>,
    /// The model wrote part of the choice (a name or arguments), rather
    /// than the words deciding it all.
    model_asked: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    llm: String,
    lines: usize,
    right: usize,
    right_tool: usize,
    /// Lines that should call no tool and called one.
    false_calls: usize,
    /// Lines where the model wrote part of the choice.
    model_asked: usize,
    choice_ms_p50_no_tool: f64,
    choice_ms_p95_no_tool: f64,
    choice_ms_p50_tool: f64,
    choice_ms_p95_tool: f64,
    results: Vec<LineReport<'a>>,
}

/// An argument as a caller's words give it: no case, spaces or punctuation.
fn norm(v: &str) -> String {
    v.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

pub(crate) fn run(
    cli: &Cli,
    config: Option<&Path>,
    file: &Path,
    out: &Path,
    model_only: bool,
) -> anyhow::Result<()> {
    let cfg = Config::load(config)?;
    let set: ToolLines = toml::from_str(
        &std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?,
    )
    .with_context(|| format!("parsing {}", file.display()))?;
    let tools = if model_only {
        ToolSet::model_only(&set.tools)
    } else {
        ToolSet::new(&set.tools)
    }
    .context("the file declares no [[tools]]")?;
    let paths = cli.paths()?;
    let device = cfg.devices.resolve(Engine::Llm)?;
    let llm = stack::llm_for(&cfg.llm, device, 0, &paths, &mut LoadTimes::default())?;
    let options = cfg.llm.generation();
    let no = AtomicBool::new(false);
    let mut session = llm.session()?;
    let opening = vec![
        ChatMessage::new(Role::System, set.system.clone()),
        ChatMessage::new(Role::Assistant, set.greeting.clone()),
    ];
    eprintln!("{} lines through {}…", set.lines.len(), llm.name());
    let mut results = Vec::new();
    for line in &set.lines {
        let (chosen, arguments, choice_ms, model_asked) = match intent(&line.say) {
            Intent::EndCall => ("end_call".to_string(), Value::Null, None, false),
            Intent::Transfer => ("transfer_call".to_string(), Value::Null, None, false),
            Intent::None => {
                // Prefilled while the caller speaks, as in a call.
                session.prefill(&opening)?;
                let mut history = opening.clone();
                history.push(ChatMessage::new(Role::User, line.say.clone()));
                let (choice, g) = choose_tool(session.as_mut(), &history, &tools, &options, &no)?;
                let asked = g.completion_tokens > 0;
                match choice {
                    Some(u) => (u.name, u.arguments, Some(g.total_ms), asked),
                    None => ("none".to_string(), Value::Null, Some(g.total_ms), asked),
                }
            }
        };
        let right_tool = chosen == line.tool;
        let right_arguments = right_tool
            && line.arguments.iter().all(|(k, want)| {
                arguments
                    .get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|got| norm(got) == norm(want))
            });
        let mark = if right_arguments { "pass" } else { "FAIL" };
        eprintln!(
            "{mark} {:<58} -> {chosen} {}",
            format!("{:?}", line.say),
            if arguments.is_null() {
                String::new()
            } else {
                arguments.to_string()
            }
        );
        results.push(LineReport {
            say: &line.say,
            expected: &line.tool,
            chosen,
            arguments,
            right_tool,
            right_arguments,
            choice_ms,
            model_asked,
        });
    }
    let times = |tool: bool| -> Vec<f64> {
        results
            .iter()
            .filter(|r| (r.expected != "none") == tool)
            .filter_map(|r| r.choice_ms)
            .collect()
    };
    let (plain, tooled) = (times(false), times(true));
    let report = Report {
        llm: llm.name(),
        lines: results.len(),
        right: results.iter().filter(|r| r.right_arguments).count(),
        right_tool: results.iter().filter(|r| r.right_tool).count(),
        false_calls: results
            .iter()
            .filter(|r| r.expected == "none" && r.chosen != "none")
            .count(),
        model_asked: results.iter().filter(|r| r.model_asked).count(),
        choice_ms_p50_no_tool: percentile(&plain, 0.5),
        choice_ms_p95_no_tool: percentile(&plain, 0.95),
        choice_ms_p50_tool: percentile(&tooled, 0.5),
        choice_ms_p95_tool: percentile(&tooled, 0.95),
        results,
    };
    println!("\nTOOL CHOICE ({})", report.llm);
    println!(
        "right tool and arguments {}/{} · right tool {}/{} · tools called when none was needed: {}",
        report.right, report.lines, report.right_tool, report.lines, report.false_calls
    );
    println!(
        "the model wrote part of the choice on {} lines; the words decided the rest",
        report.model_asked
    );
    println!(
        "the choice adds p50 {:.0} ms, p95 {:.0} ms to a turn without a tool (p50 {:.0} ms, p95 {:.0} ms before a tool runs)",
        report.choice_ms_p50_no_tool,
        report.choice_ms_p95_no_tool,
        report.choice_ms_p50_tool,
        report.choice_ms_p95_tool
    );
    std::fs::write(out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("report: {}", out.display());
    Ok(())
}
