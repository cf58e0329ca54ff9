//! A `callbox serve` child process for the commands that measure a server
//! from outside (`soak`, `bench`): its memory, descriptors and CPU time are
//! its own, read from /proc, and it is stopped with SIGTERM as a deployment
//! stops it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Cli;

/// One reading of the server process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Sample {
    /// From the start of the measurement.
    pub(crate) secs: f64,
    pub(crate) rss_kib: u64,
    pub(crate) fds: usize,
    /// User and system CPU time so far.
    pub(crate) cpu_secs: f64,
}

pub(crate) struct Server {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    /// `http://127.0.0.1:PORT`.
    pub(crate) base: String,
    /// The auth token its webhooks are signed with.
    pub(crate) token: String,
    pub(crate) log: PathBuf,
}

impl Server {
    /// Starts `callbox serve` on a free local port with the model options
    /// of `cli`, the configuration file `config`, and `env` on top (the
    /// caller's folders, limits and keys), logging to `log`; returns once it
    /// answers `/health`.
    pub(crate) async fn start(
        cli: &Cli,
        config: Option<&Path>,
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let token = format!("{:032x}", rand::random::<u128>());
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        if let Some(m) = &cli.models {
            cmd.arg("--models").arg(m);
        }
        if let Some(m) = &cli.manifest {
            cmd.arg("--manifest").arg(m);
        }
        cmd.arg("--set").arg(&cli.set).arg("-v").arg("serve");
        cmd.arg("--bind").arg(format!("127.0.0.1:{port}"));
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("CALLBOX_SERVER__VALIDATE_SIGNATURES", "true")
            .env("CALLBOX_TWILIO__AUTH_TOKEN", &token)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let pid = child.id().context("the server exited at once")?;
        let mut server = Self {
            child,
            pid,
            base: format!("http://127.0.0.1:{port}"),
            token,
            log: log.to_path_buf(),
        };
        server.wait_healthy().await?;
        Ok(server)
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("{}/ws", self.base.replacen("http", "ws", 1))
    }

    async fn wait_healthy(&mut self) -> anyhow::Result<()> {
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                anyhow::bail!(
                    "the server exited ({status}) before it was ready:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            if let Ok(r) = reqwest::get(format!("{}/health", self.base)).await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::bail!("the server was not healthy after 300 s")
    }

    /// SIGTERM, then the server drains its calls and exits: its status.
    pub(super) async fn stop(mut self) -> anyhow::Result<Option<i32>> {
        // SAFETY: kill(2) on our own child's pid, which it still holds.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let status = tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .context("the server did not exit within 90 s of SIGTERM")??;
        Ok(status.code())
    }

    pub(crate) fn sample(&self, t0: Instant) -> Option<Sample> {
        sample(self.pid, t0)
    }

    /// Samples the server every `period` until [`Sampler::stop`].
    pub(crate) fn sampler(&self, t0: Instant, period: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (kept, pid) = (samples.clone(), self.pid);
        let task = tokio::spawn(async move {
            loop {
                if let Some(s) = sample(pid, t0) {
                    kept.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                }
                tokio::time::sleep(period).await;
            }
        });
        Sampler { samples, task }
    }
}

/// The server's readings, taken on a task of their own.
pub(crate) struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Stops sampling: every reading so far, oldest first.
    pub(super) fn stop(self) -> Vec<Sample> {
        self.task.abort();
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The process's resident memory, open descriptors and CPU time, from /proc.
pub(crate) fn sample(pid: u32, t0: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    // utime and stime are the 14th and 15th fields; the command name before
    // them may hold spaces, so count from its closing parenthesis.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(Sample {
        secs: t0.elapsed().as_secs_f64(),
        rss_kib,
        fds,
        cpu_secs: ticks / per_sec,
    })
}

/// The call traces a server wrote into `dir` (see `observe::trace`), each
/// parsed; unreadable files are skipped, as a trace still being written is.
pub(crate) fn traces(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.path(), serde_json::from_str(&text).ok()?))
        })
        .collect()
}

/// This machine in a line, for reports.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let gpu = if cfg!(feature = "cuda") {
        "a CUDA build"
    } else {
        "no GPU in use"
    };
    format!("{cpus} cores ({model}), {gpu}")
}
