//! `callbox fake-apis`: the API stack's providers faked on this machine
//! (see [`crate::fakes`]), for A/B runs and for trying the API backends
//! with no account.

use clap::Args;

use super::Cli;
use crate::fakes::deepgram::Voice;
use crate::fakes::{ApiStack, Latency, REPLY};

#[derive(Debug, Args)]
pub(crate) struct FakeApisArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port of the OpenAI-compatible chat API (Groq's).
    #[arg(long, default_value_t = 8790)]
    pub(crate) llm_port: u16,
    /// Port of Deepgram's listen websocket and speak API.
    #[arg(long, default_value_t = 8791)]
    pub(crate) deepgram_port: u16,
    /// STT after Finalize, LLM to the first token, TTS to the first byte,
    /// network round trip, ms.
    #[arg(long, default_value = "195,268,23,0", value_parser = super::bench::parse_latency)]
    pub(crate) latency: Latency,
    /// Speak with the local Piper voice instead of tones (the replies can
    /// then be heard and transcribed, at Piper's cost on this machine).
    #[arg(long)]
    pub(crate) piper: bool,
    /// The LLM's reply to every request.
    #[arg(long, default_value = REPLY)]
    pub(crate) reply: String,
}

pub(crate) async fn run(cli: &Cli, a: &FakeApisArgs) -> anyhow::Result<()> {
    let paths = cli.paths()?;
    let ears = crate::stack::stt(&paths, &mut Default::default())?;
    let voice = match a.piper {
        true => Voice::Tts(crate::stack::tts(&paths, &mut Default::default())?),
        false => Voice::Tones,
    };
    let ports = (a.llm_port, a.deepgram_port);
    let stack = ApiStack::start(&a.host, ports, a.latency, (ears, voice), &a.reply).await?;
    eprintln!("the API stack, faked: point a server at it with this configuration (and the keys in its environment)\n");
    println!("{}", stack.toml());
    crate::server::shutdown_signal().await;
    Ok(())
}
