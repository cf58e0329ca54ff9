//! A bench script: one caller turn a line, spoken by our voice or read
//! from a recording, said after the previous reply, over it (a barge-in) or
//! as a backchannel (the syntax is `--script`'s help).

use std::path::Path;

use anyhow::Context;

use super::BenchArgs;
use crate::audio::wav;
use crate::cli::sim::{said, synth, SCRIPT};
use crate::cli::Cli;
use crate::sim::SimTurn;

/// One caller turn of the script: its audio and what it says.
pub(super) fn load_script(cli: &Cli, a: &BenchArgs) -> anyhow::Result<Vec<SimTurn>> {
    let lines: Vec<String> = match &a.script {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("reading the script {}", p.display()))?
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => SCRIPT
            .iter()
            .take(a.turns.clamp(1, SCRIPT.len()))
            .map(|s| s.to_string())
            .collect(),
    };
    anyhow::ensure!(!lines.is_empty(), "the script has no turns");
    let base = a
        .script
        .as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let mut tts = None;
    let mut turns = Vec::new();
    for line in lines {
        let (over, line) = over_reply(&line)?;
        if let Some(rest) = line.strip_prefix('@') {
            let (file, text) = rest.split_once('|').unwrap_or((rest, ""));
            let file = file.trim();
            // Recorded speech the manifest fetches (its `testdata` set).
            let path = match file.strip_prefix("{models}/") {
                Some(f) => cli.store()?.root.join(f),
                None => base.join(file),
            };
            let audio = wav::read(&path).with_context(|| {
                format!(
                    "reading {} (`{{models}}/testdata/…` files come with `callbox models fetch --set testdata`)",
                    path.display()
                )
            })?;
            let text = text.trim();
            turns.push(SimTurn::new(
                audio,
                (!text.is_empty()).then(|| text.to_string()),
            ));
        } else {
            if tts.is_none() {
                tts = Some(crate::stack::caller_voice(
                    &cli.paths()?,
                    &mut Default::default(),
                )?);
            }
            let voice = tts.as_ref().expect("loaded");
            turns.push(SimTurn::new(synth(voice.as_ref(), line)?, Some(said(line))));
        }
        let turn = turns.last_mut().expect("pushed");
        match over {
            Some((after, true)) => {
                turn.barge_in_after_ms = Some(after);
                turn.backchannel = true;
            }
            Some((after, false)) => turn.barge_in_after_ms = Some(after),
            None => {}
        }
    }
    anyhow::ensure!(
        !turns[0].backchannel,
        "the script's first line cannot be a backchannel: there is no reply to say it over"
    );
    Ok(turns)
}

/// A script line's `>MS ` (barge-in) or `~MS ` (backchannel) prefix: the
/// ms into the previous reply, and whether it is a backchannel.
fn over_reply(line: &str) -> anyhow::Result<(Option<(u64, bool)>, &str)> {
    let backchannel = match line.chars().next() {
        Some('>') => false,
        Some('~') => true,
        _ => return Ok((None, line)),
    };
    let (ms, rest) = line[1..]
        .split_once(char::is_whitespace)
        .unwrap_or((&line[1..], ""));
    let ms = ms.parse().with_context(|| {
        format!("{line:?}: `>` or `~` takes the ms into the reply, e.g. `~1500 uh-huh`")
    })?;
    anyhow::ensure!(!rest.trim().is_empty(), "{line:?}: nothing to say");
    Ok((Some((ms, backchannel)), rest.trim()))
}
