//! What `callbox bench` measures: a server of ours started from a
//! configuration, or any Twilio Media Streams server by its stream or its
//! TwiML webhook; and the name each gets in the report.

use std::path::{Path, PathBuf};

use super::report::StackReport;

/// What a run measures.
pub(super) enum Target {
    /// A server of ours, started with this configuration (the built-in one
    /// when none).
    Config(Option<PathBuf>),
    /// Any Twilio Media Streams server already running, at its websocket
    /// URL or at the TwiML webhook that names it (`http(s)://`): ours with
    /// `--traces`, or another bot; named in the report when given as
    /// `NAME=URL`.
    Url { url: String, name: Option<String> },
}

impl Target {
    pub(super) fn of(arg: &Path) -> Self {
        let s = arg.to_string_lossy();
        let (name, rest) = match s.split_once('=') {
            Some((name, rest)) if !name.contains(['/', ':']) => (Some(name.to_string()), rest),
            _ => (None, s.as_ref()),
        };
        if is_stream(rest) || is_webhook(rest) {
            Target::Url {
                url: rest.to_string(),
                name,
            }
        } else {
            Target::Config(Some(arg.to_path_buf()))
        }
    }
}

/// A Twilio Media Streams websocket.
fn is_stream(url: &str) -> bool {
    url.starts_with("ws://") || url.starts_with("wss://")
}

/// A TwiML webhook, which names the stream.
pub(super) fn is_webhook(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// A stack's name: the one given, its configuration file's stem, a URL's
/// host and port, else "local" (made unique).
pub(super) fn label(target: &Target, i: usize, before: &[StackReport]) -> String {
    let raw = match target {
        Target::Config(config) => config
            .as_deref()
            .and_then(|c| c.file_stem())
            .map_or("local".to_string(), |s| s.to_string_lossy().to_string()),
        Target::Url {
            name: Some(name), ..
        } => name.clone(),
        Target::Url { url, name: None } => {
            let host = url.split("://").nth(1).unwrap_or(url);
            host.split('/').next().unwrap_or(host).to_string()
        }
    };
    // The label names the stack's folder under --out, which is emptied
    // first: nothing in it may climb out.
    let base: String = raw
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || "._-".contains(c) {
            true => c,
            false => '-',
        })
        .collect();
    let base = match base.trim_start_matches(['.', '-']) {
        "" => format!("stack-{}", i + 1),
        b => b.to_string(),
    };
    if before.iter().any(|s| s.label == base) {
        format!("{base}-{}", i + 1)
    } else {
        base
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(t: &Target) -> Option<(&str, Option<&str>)> {
        match t {
            Target::Url { url, name } => Some((url.as_str(), name.as_deref())),
            Target::Config(_) => None,
        }
    }

    #[test]
    fn a_target_is_a_configuration_a_url_or_a_named_url() {
        let t = Target::of(Path::new("scripts/bench/local.toml"));
        assert!(url(&t).is_none());
        let t = Target::of(Path::new("ws://127.0.0.1:8765/ws"));
        assert_eq!(url(&t), Some(("ws://127.0.0.1:8765/ws", None)));
        let t = Target::of(Path::new("pipecat-api=wss://bot.example/ws?a=b"));
        assert_eq!(
            url(&t),
            Some(("wss://bot.example/ws?a=b", Some("pipecat-api")))
        );
        // An `=` inside a path or URL is not a name.
        let t = Target::of(Path::new("dir/a=b.toml"));
        assert!(url(&t).is_none());
        let t = Target::of(Path::new("ws://h/ws?x=ws://y"));
        assert_eq!(url(&t), Some(("ws://h/ws?x=ws://y", None)));
    }

    #[test]
    fn a_label_names_a_folder_inside_out() {
        let named = |n: &str| Target::Url {
            url: "ws://h/ws".into(),
            name: Some(n.into()),
        };
        assert_eq!(label(&named("pipecat-local"), 0, &[]), "pipecat-local");
        assert_eq!(label(&named(".."), 1, &[]), "stack-2");
        assert_eq!(label(&named("../x"), 0, &[]), "x");
        assert_eq!(label(&named("a b"), 0, &[]), "a-b");
        let host = Target::Url {
            url: "ws://127.0.0.1:8080/ws".into(),
            name: None,
        };
        assert_eq!(label(&host, 0, &[]), "127.0.0.1-8080");
        assert_eq!(label(&Target::Config(None), 0, &[]), "local");
    }
}
