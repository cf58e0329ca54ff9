use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // llama.cpp's OpenMP workers spin between tokens by default, taking the
    // cores Whisper and Piper need in the same process. Set before any thread
    // exists; an explicit setting by the operator wins.
    if std::env::var_os("OMP_WAIT_POLICY").is_none() {
        std::env::set_var("OMP_WAIT_POLICY", "PASSIVE");
    }
    cap_malloc_arenas();
    let cli = callbox::cli::Cli::parse();
    let default = match cli.verbose {
        0 => "warn",
        1 => "info,callbox=info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("CALLBOX_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(callbox::cli::run(cli)) {
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
