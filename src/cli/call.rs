//! `callbox serve` and `callbox dial`: the product's own commands.

use clap::Args;
use std::path::PathBuf;

use super::Cli;
use crate::config::Config;
use crate::server::{self, AppState};
use crate::stack::{self, Engines};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (TOML); `CALLBOX_*` variables override it.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Listen address (overrides server.bind).
    #[arg(long)]
    pub bind: Option<String>,
}

pub(crate) async fn serve(cli: &Cli, a: &ServeArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(a.config.as_deref())?;
    if let Some(b) = &a.bind {
        cfg.server.bind = b.clone();
    }
    let engines = load_engines(cli, &cfg).await?;
    let bind = cfg.server.bind.clone();
    eprintln!("callbox listening on {bind}: point your Twilio number's voice webhook at POST /");
    server::serve_until(
        AppState::new(cfg, engines),
        &bind,
        None,
        server::shutdown_signal(),
    )
    .await
}

#[derive(Debug, Args)]
pub(crate) struct DialArgs {
    /// The number to call, E.164 (+14155550100).
    pub(crate) to: String,
    /// Caller ID (default: twilio.from_number / TWILIO_PHONE_NUMBER).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Configuration file (TOML) of the server that will take the call.
    #[arg(long, short, env = "CALLBOX_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// A value for the persona's `{{NAME}}`: `--var name=Alice`; repeat.
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    pub(crate) vars: Vec<(String, String)>,
    /// One of `personas.named` instead of the outbound persona.
    #[arg(long)]
    pub(crate) persona: Option<String>,
    /// Detect an answering machine and leave the persona's voicemail
    /// message on it (else `twilio.machine_detection`).
    #[arg(long)]
    pub(crate) machine_detection: bool,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: NAME=VALUE"))
}

/// Places an outbound call that Twilio connects to the server at
/// `server.public_url`, exactly as `POST /dialout` does.
pub(crate) async fn dial(a: &DialArgs) -> anyhow::Result<()> {
    let cfg = Config::load(a.config.as_deref())?;
    let Some(base) = cfg.server.public_url.clone() else {
        anyhow::bail!(
            "server.public_url is not set (CALLBOX_SERVER__PUBLIC_URL): Twilio must know where to \
             reach the server that takes the call"
        );
    };
    let rest = crate::twilio::rest::TwilioRest::from_config(&cfg.twilio);
    let req = server::dialout::DialRequest {
        to_number: Some(a.to.clone()),
        from_number: a.from.clone(),
        variables: a.vars.iter().cloned().collect(),
        persona: a.persona.clone(),
        machine_detection: a.machine_detection.then_some(true),
    };
    let dialed = server::dialout::dial(&cfg, rest.as_ref(), &req, &base).await?;
    println!("{}", serde_json::to_string(&dialed)?);
    Ok(())
}

/// The model set's engines, loaded off the async runtime, with the
/// description of their models for traces.
pub(super) async fn load_engines(cli: &Cli, cfg: &Config) -> anyhow::Result<Engines> {
    let store = cli.store()?;
    let paths = store.paths(&cli.set)?;
    let models = stack::with_apis(stack::describe(&store.manifest, &cli.set), cfg);
    let cfg = cfg.clone();
    let mut engines = tokio::task::spawn_blocking(move || Engines::load(&paths, &cfg)).await??;
    engines.models = models;
    Ok(engines)
}
