//! `callbox models …`

use std::path::PathBuf;

use clap::Subcommand;

use super::Cli;
use crate::models::fetch::{fetch, FetchOptions};
use crate::models::{convert, FileState};

#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// Download and unpack a model set into the cache (idempotent).
    Fetch {
        /// Re-download and re-unpack everything.
        #[arg(long)]
        force: bool,
    },
    /// Say what is present, what is missing, and how to fix it.
    Check {
        /// Hash every file (slower, catches corruption).
        #[arg(long)]
        verify: bool,
    },
    /// Convert a CTranslate2 Whisper model into the layout callbox loads.
    ConvertWhisper {
        /// Folder with model.bin, config.json and tokenizer.json.
        src: PathBuf,
        /// Output folder.
        dst: PathBuf,
    },
    /// Print where the models of the set are.
    Path,
}

pub(crate) async fn run(cli: &Cli, cmd: &ModelsCommand) -> anyhow::Result<()> {
    let store = cli.store()?;
    match cmd {
        ModelsCommand::Fetch { force } => {
            let mut opts = FetchOptions::new(&cli.set);
            opts.force = *force;
            eprintln!("model cache: {}", store.root.display());
            fetch(&store, &opts).await?;
            eprintln!("model set {:?} is ready", cli.set);
        }
        ModelsCommand::Check { verify } => {
            let statuses = store.check(&cli.set, *verify)?;
            let mut bad = 0;
            for s in &statuses {
                let (mark, note) = match &s.state {
                    FileState::Ok => ("ok     ", String::new()),
                    FileState::Missing => ("MISSING", String::new()),
                    FileState::Corrupt(why) => ("CORRUPT", format!(" ({why})")),
                };
                if s.state != FileState::Ok {
                    bad += 1;
                }
                println!("{mark} {}  [{}]{note}", s.path.display(), s.source);
            }
            let ort = store
                .manifest
                .set(&cli.set)?
                .ort
                .as_ref()
                .map(|p| store.root.join(p));
            if let Some(ort) = ort.filter(|p| p.is_file()) {
                match crate::engines::local::onnx::library_version(&ort) {
                    Ok(v) => println!("ONNX Runtime {v}"),
                    Err(e) => {
                        bad += 1;
                        println!("CORRUPT {e}");
                    }
                }
            }
            if bad > 0 {
                let force = if statuses
                    .iter()
                    .any(|s| matches!(s.state, FileState::Corrupt(_)))
                {
                    " --force"
                } else {
                    ""
                };
                anyhow::bail!(
                    "{bad} model file(s) of set {:?} need attention; fix: callbox models fetch --set {}{force}",
                    cli.set,
                    cli.set
                );
            }
            println!(
                "all {} files of set {:?} are present",
                statuses.len(),
                cli.set
            );
        }
        ModelsCommand::ConvertWhisper { src, dst } => {
            convert::convert_whisper(src, dst)?;
            println!("wrote {}", dst.display());
        }
        ModelsCommand::Path => {
            let p = store.paths(&cli.set)?;
            println!("{p:#?}");
        }
    }
    Ok(())
}
