//! Answer quality, measured: a set of caller lines, each with checks on the
//! reply the caller would hear, and the score per category.
//!
//! Latency alone cannot say whether a model set or a prompt is good enough
//! for the phone; a small model answers fast and wrongly. The set is data
//! (`eval/phone-lines.toml`, embedded as the default), the checks are plain
//! patterns a person can read and argue with, and the driver
//! (`callbox eval`) runs the lines through the real persona and LLM. This
//! module is only the rules: parsing a set, what the caller hears of a
//! reply and whether it passes, so they are tested without any model.

use std::collections::BTreeMap;
use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use crate::text::sentence::SentenceAggregator;
use crate::text::spoken::spoken;

/// The set that ships with callbox.
pub(crate) const PHONE_LINES: &str = include_str!("../../eval/phone-lines.toml");

/// Piper's voices speak about 2.6 words a second (~155 a minute).
const WORDS_PER_SECOND: f64 = 2.6;

/// What kind of line it is; scores are reported per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Category {
    /// A question with an accepted answer.
    Fact,
    /// The caller asks the bot to do something it can do in words.
    Request,
    /// Greetings, thanks, how-are-you.
    SmallTalk,
    /// Something a phone assistant without tools or data cannot do or know:
    /// the reply must say so rather than invent it.
    OutOfScope,
    /// A line that only makes sense with the exchanges before it.
    FollowUp,
}

impl Category {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Fact => "fact",
            Self::Request => "request",
            Self::SmallTalk => "small-talk",
            Self::OutOfScope => "out-of-scope",
            Self::FollowUp => "follow-up",
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set as written in its TOML file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    /// Where the lines and their accepted answers come from.
    sources: String,
    /// Longest acceptable reply, in spoken seconds, unless a line says.
    max_secs: f64,
    /// Patterns no reply may match (markup, other languages' words…).
    reject_always: Vec<String>,
    line: Vec<LineFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineFile {
    id: String,
    category: Category,
    say: String,
    /// Earlier exchanges of the call: (caller, bot) pairs.
    #[serde(default)]
    before: Vec<[String; 2]>,
    /// At least one must match.
    #[serde(default)]
    accept: Vec<String>,
    /// None may match.
    #[serde(default)]
    reject: Vec<String>,
    max_secs: Option<f64>,
}

/// One caller line, its patterns compiled.
#[derive(Debug)]
pub(crate) struct Line {
    pub(crate) id: String,
    pub(crate) category: Category,
    pub(crate) say: String,
    pub(crate) before: Vec<(String, String)>,
    accept: Vec<Regex>,
    reject: Vec<Regex>,
    max_secs: f64,
}

/// A set of lines, ready to check replies against.
#[derive(Debug)]
pub(crate) struct LineSet {
    pub(crate) sources: String,
    pub(crate) lines: Vec<Line>,
    reject_always: Vec<Regex>,
}

/// A set that cannot be used, and why (the line's id, the pattern).
#[derive(Debug, thiserror::Error)]
#[error("eval set: {0}")]
pub(crate) struct SetError(String);

fn pattern(p: &str, id: &str) -> Result<Regex, SetError> {
    RegexBuilder::new(p)
        .case_insensitive(true)
        .build()
        .map_err(|e| SetError(format!("line {id}: pattern {p:?}: {e}")))
}

fn patterns(ps: &[String], id: &str) -> Result<Vec<Regex>, SetError> {
    ps.iter().map(|p| pattern(p, id)).collect()
}

impl LineSet {
    pub(crate) fn parse(toml_text: &str) -> Result<Self, SetError> {
        let f: SetFile = toml::from_str(toml_text).map_err(|e| SetError(e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        let mut lines = Vec::with_capacity(f.line.len());
        for l in f.line {
            if !seen.insert(l.id.clone()) {
                return Err(SetError(format!("line id {} appears twice", l.id)));
            }
            // A line nothing can fail is not a check.
            if l.accept.is_empty() && l.reject.is_empty() {
                return Err(SetError(format!("line {} has no accept or reject", l.id)));
            }
            if l.category == Category::FollowUp && l.before.is_empty() {
                return Err(SetError(format!(
                    "follow-up {} has no earlier exchange",
                    l.id
                )));
            }
            lines.push(Line {
                accept: patterns(&l.accept, &l.id)?,
                reject: patterns(&l.reject, &l.id)?,
                max_secs: l.max_secs.unwrap_or(f.max_secs),
                before: l.before.into_iter().map(|[u, b]| (u, b)).collect(),
                id: l.id,
                category: l.category,
                say: l.say,
            });
        }
        Ok(Self {
            sources: f.sources,
            lines,
            reject_always: patterns(&f.reject_always, "reject_always")?,
        })
    }

    /// The set that ships with callbox.
    pub(crate) fn builtin() -> Self {
        Self::parse(PHONE_LINES).expect("the built-in set is checked by a test")
    }

    /// Whether `reply` (what the caller heard) passes `line`'s checks.
    pub(crate) fn check(&self, line: &Line, reply: &str) -> Verdict {
        let mut failures = Vec::new();
        let said = spoken(reply);
        let words = said.split_whitespace().count();
        let spoken_secs = words as f64 / WORDS_PER_SECOND;
        if words == 0 {
            failures.push("no reply".to_string());
        }
        if !line.accept.is_empty() && !line.accept.iter().any(|r| r.is_match(reply)) {
            failures.push("no accepted answer".to_string());
        }
        for r in line.reject.iter().chain(&self.reject_always) {
            if let Some(m) = r.find(reply) {
                failures.push(format!("said {:?}", m.as_str()));
            }
        }
        if spoken_secs > line.max_secs {
            failures.push(format!(
                "{spoken_secs:.1} s spoken, over {:.0} s",
                line.max_secs
            ));
        }
        Verdict {
            passed: failures.is_empty(),
            failures,
            spoken_secs,
        }
    }
}

/// The outcome of one line.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Verdict {
    pub(crate) passed: bool,
    /// Why it failed, one entry per check.
    pub(crate) failures: Vec<String>,
    /// The reply's length as spoken (numbers read out).
    pub(crate) spoken_secs: f64,
}

/// What the caller hears of a generated reply: as in a call, a sentence the
/// token limit cut off is not spoken unless it is all there is.
pub(crate) fn heard(text: &str, finished: bool) -> String {
    let mut agg = SentenceAggregator::new();
    let mut pieces = agg.push(text);
    if finished || pieces.is_empty() {
        pieces.extend(agg.flush());
    }
    pieces.join(" ")
}

/// Passed and total lines per category, in category order.
pub(crate) fn scores<'a>(
    results: impl IntoIterator<Item = (Category, &'a Verdict)>,
) -> BTreeMap<Category, (usize, usize)> {
    let mut by: BTreeMap<Category, (usize, usize)> = BTreeMap::new();
    for (c, v) in results {
        let e = by.entry(c).or_default();
        e.0 += usize::from(v.passed);
        e.1 += 1;
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
sources = "written for the test"
max_secs = 10.0
reject_always = ['\*', 'bonjour']

[[line]]
id = "capital"
category = "fact"
say = "What is the capital of France?"
accept = ['\bparis\b']

[[line]]
id = "balance"
category = "out-of-scope"
say = "What's my bank balance?"
accept = ["can't|cannot|don't|do not|not able|unable"]
reject = ['\$\s?\d', '\d+ dollars']

[[line]]
id = "germany"
category = "follow-up"
before = [["What is the capital of France?", "Paris."]]
say = "And Germany?"
accept = ['\bberlin\b']
max_secs = 3.0
"#;

    #[test]
    fn a_right_reply_passes_and_wrong_ones_fail_for_their_reason() {
        let set = LineSet::parse(SMALL).unwrap();
        let [capital, balance, germany] = &set.lines[..] else {
            panic!("three lines")
        };
        assert!(set.check(capital, "The capital of France is Paris.").passed);
        let v = set.check(capital, "The capital of France is Lyon.");
        assert_eq!(v.failures, ["no accepted answer"]);
        let v = set.check(capital, "Bonjour! It is Paris.");
        assert_eq!(v.failures, ["said \"Bonjour\""]);
        assert!(
            set.check(balance, "Sorry, I can't see your account.")
                .passed
        );
        let v = set.check(balance, "I can't say, but it is $120.");
        assert_eq!(v.failures, ["said \"$1\""]);
        assert!(set.check(germany, "Berlin.").passed);
        // Eleven words are over three spoken seconds.
        let v = set.check(
            germany,
            "Berlin is the capital, and it is a very big city indeed.",
        );
        assert!(!v.passed && v.failures[0].contains("over 3 s"), "{v:?}");
        assert_eq!(
            set.check(capital, "  ").failures[..2],
            ["no reply", "no accepted answer"]
        );
        let s = scores([
            (Category::Fact, &set.check(capital, "Paris")),
            (Category::Fact, &set.check(capital, "Rome")),
        ]);
        assert_eq!(s[&Category::Fact], (1, 2));
    }

    #[test]
    fn numbers_count_as_the_words_they_are_spoken_as() {
        let set = LineSet::parse(SMALL).unwrap();
        let v = set.check(&set.lines[0], "Paris, 2,198 miles.");
        // "Paris, two thousand one hundred and ninety-eight miles.": 8 words.
        assert!(
            (v.spoken_secs - 8.0 / WORDS_PER_SECOND).abs() < 1e-9,
            "{v:?}"
        );
    }

    #[test]
    fn a_set_that_checks_nothing_or_repeats_an_id_is_refused() {
        let none = SMALL.replace("accept = ['\\bparis\\b']", "");
        assert!(LineSet::parse(&none)
            .unwrap_err()
            .to_string()
            .contains("capital"));
        let twice = SMALL.replace("id = \"germany\"", "id = \"capital\"");
        assert!(LineSet::parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let bad = SMALL.replace("'\\bparis\\b'", "'(paris'");
        assert!(LineSet::parse(&bad).is_err());
    }

    #[test]
    fn a_sentence_cut_by_the_token_limit_is_not_heard() {
        assert_eq!(
            heard("Birds have wings. They flap them very", false),
            "Birds have wings."
        );
        assert_eq!(
            heard("Birds have wings. They flap.", true),
            "Birds have wings. They flap."
        );
        // All there is: spoken, as in a call.
        assert_eq!(heard("Birds have", false), "Birds have");
    }

    #[test]
    fn the_builtin_set_parses_and_covers_every_category_with_enough_lines() {
        let set = LineSet::builtin();
        assert!(set.lines.len() >= 100, "{} lines", set.lines.len());
        let any = Verdict {
            passed: true,
            failures: vec![],
            spoken_secs: 0.0,
        };
        let by = scores(set.lines.iter().map(|l| (l.category, &any)));
        assert_eq!(by.len(), 5, "{by:?}");
        assert!(by.values().all(|&(_, n)| n >= 10), "{by:?}");
    }
}
