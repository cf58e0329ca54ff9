//! `callbox eval`: the answer-quality benchmark. Every line of a set goes
//! through the configured inbound persona (its greeting in the history, as
//! in a call) and the configured LLM, with the call's sampling settings;
//! what the caller would hear is checked ([`crate::eval`]). Prints the
//! score per category, the first-token and whole-reply times, the failures,
//! and writes everything to a JSON report.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::{percentile, Cli};
use crate::config::Config;
use crate::engines::device::Engine;
use crate::engines::{ChatMessage, Role};
use crate::eval::{heard, scores, LineSet, Verdict};
use crate::stack::{self, LoadTimes};

#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// A configuration file: the persona, the LLM backend and its settings.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// A set of lines other than the built-in one (eval/phone-lines.toml).
    #[arg(long)]
    pub(crate) lines: Option<PathBuf>,
    /// Only the lines whose id contains this (e.g. "follow-up").
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// Where the JSON report goes.
    #[arg(long, default_value = "eval-report.json")]
    pub(crate) out: PathBuf,
    /// Score the choice of tools instead of the answers, on this set of
    /// tools and lines (e.g. eval/tool-lines.toml).
    #[arg(long, conflicts_with_all = ["lines", "only"])]
    pub tools: Option<PathBuf>,
    /// With --tools: leave every choice to the model (no triggers, no
    /// arguments read from the words), to measure the model alone.
    #[arg(long, requires = "tools")]
    pub(crate) model_only: bool,
}

/// One line's outcome in the report.
#[derive(Serialize)]
struct LineReport<'a> {
    id: &'a str,
    category: &'a str,
    say: &'a str,
    /// What the caller would hear.
    reply: String,
    /// The text as generated, when the token limit cut a sentence off it.
    #[serde(skip_serializing_if = "Option::is_none")]
    generated: Option<String>,
    #[serde(flatten)]
    verdict: Verdict,
    first_token_ms: Option<f64>,
    reply_ms: f64,
}

#[derive(Serialize)]
struct CategoryScore {
    category: String,
    passed: usize,
    lines: usize,
    score: f64,
}

#[derive(Serialize)]
struct Report<'a> {
    llm: String,
    system_prompt: &'a str,
    max_tokens: usize,
    temperature: f32,
    repeat_penalty: f32,
    /// Passed lines over all lines.
    score: f64,
    categories: Vec<CategoryScore>,
    first_token_ms_p50: f64,
    first_token_ms_p95: f64,
    reply_ms_p50: f64,
    reply_ms_p95: f64,
    sources: &'a str,
    lines: Vec<LineReport<'a>>,
}

pub(crate) fn run(cli: &Cli, a: &EvalArgs) -> anyhow::Result<()> {
    if let Some(file) = &a.tools {
        return super::eval_tools::run(cli, a.config.as_deref(), file, &a.out, a.model_only);
    }
    let cfg = Config::load(a.config.as_deref())?;
    let set = match &a.lines {
        Some(p) => LineSet::parse(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )?,
        None => LineSet::builtin(),
    };
    let lines: Vec<_> = set
        .lines
        .iter()
        .filter(|l| a.only.as_deref().is_none_or(|o| l.id.contains(o)))
        .collect();
    anyhow::ensure!(!lines.is_empty(), "no line of the set matches --only");
    let paths = cli.paths()?;
    let device = cfg.devices.resolve(Engine::Llm)?;
    let llm = stack::llm_for(&cfg.llm, device, 0, &paths, &mut LoadTimes::default())?;
    let persona = &cfg.personas.inbound;
    let options = cfg.llm.generation();
    let no = AtomicBool::new(false);
    // One session for the whole set, as one call: each line's prompt starts
    // with the same persona and greeting, which the cache keeps.
    let mut session = llm.session()?;
    let opening = vec![
        ChatMessage::new(Role::System, persona.system.clone()),
        ChatMessage::new(Role::Assistant, persona.greeting.clone()),
    ];
    eprintln!("{} lines through {}…", lines.len(), llm.name());
    let mut reports = Vec::with_capacity(lines.len());
    for line in &lines {
        let mut history = opening.clone();
        for (caller, bot) in &line.before {
            history.push(ChatMessage::new(Role::User, caller.clone()));
            history.push(ChatMessage::new(Role::Assistant, bot.clone()));
        }
        // Prefilled while the caller speaks, as in a call: the reply's time
        // is what the caller waits for.
        session.prefill(&history)?;
        history.push(ChatMessage::new(Role::User, line.say.clone()));
        let g = session.generate(&history, &options, &no, &mut |_| true)?;
        let generated = g.text.trim().to_string();
        let reply = heard(&generated, g.finished);
        let verdict = set.check(line, &reply);
        let mark = if verdict.passed { "pass" } else { "FAIL" };
        eprintln!("{mark} {:<34} {:?} -> {reply:?}", line.id, line.say);
        if !verdict.passed {
            eprintln!("     {}", verdict.failures.join("; "));
        }
        reports.push(LineReport {
            id: &line.id,
            category: line.category.as_str(),
            say: &line.say,
            generated: (reply != generated).then_some(generated),
            reply,
            verdict,
            first_token_ms: g.first_token_ms,
            reply_ms: g.total_ms,
        });
    }
    let by = scores(
        lines
            .iter()
            .map(|l| l.category)
            .zip(reports.iter().map(|r| &r.verdict)),
    );
    let passed = reports.iter().filter(|r| r.verdict.passed).count();
    let first: Vec<f64> = reports.iter().filter_map(|r| r.first_token_ms).collect();
    let whole: Vec<f64> = reports.iter().map(|r| r.reply_ms).collect();
    let report = Report {
        llm: llm.name(),
        system_prompt: &persona.system,
        max_tokens: options.max_tokens,
        temperature: options.temperature,
        repeat_penalty: options.repeat_penalty,
        score: passed as f64 / reports.len() as f64,
        categories: by
            .iter()
            .map(|(c, &(p, n))| CategoryScore {
                category: c.to_string(),
                passed: p,
                lines: n,
                score: p as f64 / n as f64,
            })
            .collect(),
        first_token_ms_p50: percentile(&first, 0.5),
        first_token_ms_p95: percentile(&first, 0.95),
        reply_ms_p50: percentile(&whole, 0.5),
        reply_ms_p95: percentile(&whole, 0.95),
        sources: &set.sources,
        lines: reports,
    };
    println!("\nANSWER QUALITY ({})", report.llm);
    for c in &report.categories {
        println!(
            "{:<13} {:>3}/{:<3} {:>5.1}%",
            c.category,
            c.passed,
            c.lines,
            c.score * 100.0
        );
    }
    println!(
        "{:<13} {:>3}/{:<3} {:>5.1}%",
        "all",
        passed,
        report.lines.len(),
        report.score * 100.0
    );
    println!(
        "first token p50 {:.0} ms, p95 {:.0} ms · whole reply p50 {:.0} ms, p95 {:.0} ms",
        report.first_token_ms_p50,
        report.first_token_ms_p95,
        report.reply_ms_p50,
        report.reply_ms_p95
    );
    std::fs::write(&a.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!("report: {}", a.out.display());
    Ok(())
}
