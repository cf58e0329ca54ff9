use callbox::observe::log::{log_setup, LogFormat};
use clap::Parser;

fn main() -> std::process::ExitCode {
    // llama.cpp's OpenMP workers spin between tokens by default, taking the
    // cores Whisper and Piper need in the same process. Set before any thread
    // exists; an explicit setting by the operator wins.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
    cap_malloc_arenas();
    let cli = callbox::cli::Cli::parse();
    if let Err(e) = init_logging(cli.verbose) {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(callbox::cli::run(cli));
    // A blocking job still running (an inference the drain cut short, a
    // provider's request waiting out its timeout) must not hold the exit:
    // the calls' records are already written and the observers flushed.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The log on stderr: filter from `CALLBOX_LOG`, else `RUST_LOG` (so
/// `CALLBOX_LOG` wins when both are set), else `-v`; format from
/// `CALLBOX_LOG_FORMAT`, `text` (default) or `json` (one object per line, the
/// event's fields at the top level, for container log collectors). An unknown
/// format or a filter that does not parse stops the start with an error.
fn init_logging(verbose: u8) -> Result<(), String> {
    let var = |name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
    let (filter, format) = log_setup(
        verbose,
        var("CALLBOX_LOG").as_deref(),
        var("RUST_LOG").as_deref(),
        var("CALLBOX_LOG_FORMAT").as_deref(),
    )?;
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
    Ok(())
}

/// glibc gives threads that allocate at the same time heaps of their own
/// ("arenas"), up to eight per core, and each arena keeps the free memory of
/// its busiest moment. The engines' large buffers (a sentence's tensors in
/// Piper, Whisper's activations) are allocated on whichever thread runs
/// them, so every arena ends up holding a peak of its own. Two per core
/// keeps allocation uncontended and that retention bounded. Set before any
/// thread exists; `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` set by the
/// operator wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let arenas = i32::try_from(2 * cores).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets an allocator parameter; no thread but this
    // one exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
