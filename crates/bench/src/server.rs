//! The harness that starts a real `ce-supervisor` process, for the
//! benchmarks and the integration tests alike: found beside the running
//! executable (or one directory up, where test binaries live), listening
//! on ports it picks itself (port 0, learnt through `--addr-file`, so two
//! servers never race for one), stopped when dropped; and the process tree
//! it owns, for per-process figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ce_proto::v1::RerankRequest;
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use tonic::transport::Channel;

/// Why a server could not be started or reached.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The executable is not beside this one.
    #[error("{0} not found: build it with `cargo build --release -p supervisor`")]
    Missing(PathBuf),
    /// Spawning or a port failed.
    #[error("starting ce-supervisor: {0}")]
    Io(#[from] std::io::Error),
    /// It did not answer a request in time.
    #[error("ce-supervisor did not become ready within {0:?}")]
    NotReady(Duration),
    /// It exited.
    #[error("ce-supervisor exited: {0}")]
    Exited(std::process::ExitStatus),
    /// It did not exit in time after SIGTERM (it was SIGKILLed).
    #[error("ce-supervisor did not exit within {0:?} of SIGTERM")]
    StillRunning(Duration),
    /// A test took the process to handle it itself.
    #[error("the ce-supervisor process was taken by its caller")]
    Taken,
}

/// What dropping a [`Supervisor`] does to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDrop {
    /// SIGTERM, then wait for it to drain and exit (benchmarks).
    #[default]
    Terminate,
    /// SIGKILL (tests: whatever state it is in, it goes now).
    Kill,
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `--model`.
    pub model: String,
    /// Further flags.
    pub args: Vec<String>,
    /// Extra environment variables (the workers inherit them).
    pub env: Vec<(String, String)>,
    /// `--worker-dir` (default: beside `ce-supervisor`).
    pub worker_dir: Option<PathBuf>,
    /// What dropping the handle does.
    pub on_drop: OnDrop,
    /// Start it as the leader of its own process group, as a shell starts
    /// a foreground job, so [`Supervisor::interrupt_group`] can deliver a
    /// terminal's Ctrl-C to the group. It then also gets SIGKILL should
    /// this process die first (it no longer shares our group's fate).
    pub own_process_group: bool,
    /// Where its log (stderr, its workers' included) goes; `None`: ours.
    pub log_file: Option<PathBuf>,
}

/// The `ce-supervisor` executable: beside the running one, or one directory
/// up (test binaries run from `target/<profile>/deps`).
pub fn supervisor_exe() -> Result<PathBuf, ServerError> {
    let here = std::env::current_exe()?;
    let beside = here.with_file_name("ce-supervisor");
    let above = here
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("ce-supervisor"));
    [Some(beside.clone()), above]
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or(ServerError::Missing(beside))
}

/// The workspace's root (the default model lives under it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How long a new server may take to write its addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(60);

/// A running `ce-supervisor`.
#[derive(Debug)]
pub struct Supervisor {
    /// The process (taken by a test that kills it itself).
    pub child: Option<Child>,
    /// The gRPC endpoint (`http://127.0.0.1:PORT`).
    pub grpc: String,
    /// The gRPC port.
    pub grpc_port: u16,
    /// The HTTP port.
    pub http_port: u16,
    on_drop: OnDrop,
    /// Holds the address file.
    _scratch: tempfile::TempDir,
}

impl Supervisor {
    /// Starts `ce-supervisor --model MODEL ARGS…` on free loopback ports;
    /// SIGTERM when dropped.
    pub fn start(model: &str, args: &[String]) -> Result<Self, ServerError> {
        Self::launch(Launch {
            model: model.into(),
            args: args.to_vec(),
            ..Launch::default()
        })
    }

    /// Starts a server as `launch` says and returns once both its ports
    /// listen (it may still be loading: see [`Supervisor::wait_ready`]).
    pub fn launch(launch: Launch) -> Result<Self, ServerError> {
        let exe = supervisor_exe()?;
        let scratch = tempfile::tempdir()?;
        let addr_file = scratch.path().join("addrs.json");
        let mut command = Command::new(exe);
        command
            .args(["--model", &launch.model])
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .arg("--addr-file")
            .arg(&addr_file);
        if let Some(dir) = &launch.worker_dir {
            command.arg("--worker-dir").arg(dir);
        }
        if launch.own_process_group {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
            // Only Linux can ask the kernel to kill the server with this
            // process; elsewhere `Drop` stops it, and a benchmark killed by
            // SIGKILL can leave it running.
            #[cfg(target_os = "linux")]
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))?;
                    Ok(())
                });
            }
        }
        if let Some(log) = &launch.log_file {
            command.stderr(std::fs::File::create(log)?);
        }
        let child = command
            .args(&launch.args)
            .env("CE_LOG", std::env::var("CE_LOG").unwrap_or("warn".into()))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .spawn()?;
        let mut server = Self {
            child: Some(child),
            grpc: String::new(),
            grpc_port: 0,
            http_port: 0,
            on_drop: launch.on_drop,
            _scratch: scratch,
        };
        let (grpc, http) = server.wait_for_addrs(&addr_file)?;
        server.grpc = format!("http://127.0.0.1:{grpc}");
        (server.grpc_port, server.http_port) = (grpc, http);
        Ok(server)
    }

    fn wait_for_addrs(&mut self, path: &Path) -> Result<(u16, u16), ServerError> {
        let until = Instant::now() + LISTEN_WAIT;
        let port = |v: &serde_json::Value, key: &str| {
            v.get(key)?
                .as_str()?
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.port())
        };
        loop {
            if let Some(v) = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                && let (Some(grpc), Some(http)) = (port(&v, "grpc"), port(&v, "http"))
            {
                return Ok((grpc, http));
            }
            if let Some(status) = self.child_mut()?.try_wait()? {
                return Err(ServerError::Exited(status));
            }
            if Instant::now() > until {
                return Err(ServerError::NotReady(LISTEN_WAIT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn child_mut(&mut self) -> Result<&mut Child, ServerError> {
        self.child.as_mut().ok_or(ServerError::Taken)
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `/health` says it serves.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), ServerError> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if http_get(self.http_port, "/health").is_ok_and(|(status, _)| status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ServerError::NotReady(limit))
    }

    /// A gRPC client (the server may still be loading).
    pub async fn client(&self) -> Result<CrossEncoderClient<Channel>, tonic::transport::Error> {
        CrossEncoderClient::connect(self.grpc.clone()).await
    }

    /// Waits until a one-pair request is answered; returns a client.
    pub async fn connect(
        &mut self,
        limit: Duration,
    ) -> Result<CrossEncoderClient<Channel>, ServerError> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child_mut()?.try_wait()? {
                return Err(ServerError::Exited(status));
            }
            if let Ok(mut c) = CrossEncoderClient::connect(self.grpc.clone()).await {
                let probe = RerankRequest {
                    query: "ready?".into(),
                    documents: vec!["yes".into()],
                    ..Default::default()
                };
                if c.rerank(probe).await.is_ok() {
                    return Ok(c);
                }
            }
            if Instant::now() > until {
                return Err(ServerError::NotReady(limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The samples of `/metrics` whose line starts with `prefix`, summed
    /// (0 when absent or unreachable).
    pub fn metric_sum(&self, prefix: &str) -> f64 {
        http_get(self.http_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until no batch is in flight and nothing is queued (polling
    /// `/metrics`), at most `limit`; false if it never went idle.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        loop {
            let busy = self.metric_sum("inference_batches_in_flight")
                + self.metric_sum("inference_queue_size");
            if busy == 0.0 {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The supervisor and its workers now.
    pub fn processes(&self) -> Vec<Process> {
        let pid = self.pid();
        let mut all = vec![Process::read(pid)];
        all.extend(children(pid).into_iter().map(Process::read));
        all
    }

    /// The worker processes (pid, executable name).
    pub fn workers(&self) -> Vec<(u32, String)> {
        children(self.pid())
            .into_iter()
            .map(Process::read)
            .map(|p| (p.pid, p.name))
            .collect()
    }

    /// Open file descriptors of the supervisor.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Shared-memory mappings of the supervisor, its rings: memfds, or
    /// (portable IPC backend) unlinked POSIX shared-memory objects.
    pub fn ring_mappings(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.pid()))
            .map(|m| {
                m.lines()
                    .filter(|l| l.contains("/memfd:") || l.contains("/dev/shm/"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// CPU time the supervisor has used (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the parenthesised name: utime and stime are 12 and 13.
        stat.rsplit_once(')')
            .map(|(_, rest)| {
                let fields: Vec<&str> = rest.split_whitespace().collect();
                let field = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                field(11) + field(12)
            })
            .unwrap_or(0)
    }

    /// SIGINT to the supervisor's whole process group, as a terminal's
    /// Ctrl-C does (start it with [`Launch::own_process_group`]).
    pub fn interrupt_group(&self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::INT);
        }
    }

    /// Waits for the supervisor to exit on its own, within `limit` (SIGKILL past it).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, ServerError> {
        let mut child = self.child.take().ok_or(ServerError::Taken)?;
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ServerError::StillRunning(limit));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status within `limit` (SIGKILL past it).
    pub fn terminate(&mut self, limit: Duration) -> Result<ExitStatus, ServerError> {
        let child = self.child.as_ref().ok_or(ServerError::Taken)?;
        signal(child, rustix::process::Signal::TERM);
        self.wait_exit(limit)
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            match self.on_drop {
                OnDrop::Terminate => signal(&child, rustix::process::Signal::TERM),
                OnDrop::Kill => {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET on loopback: `(status, body)`.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http(port, "GET", path, None)
}

/// A minimal HTTP/1.1 client on loopback (a JSON body, if any): `(status,
/// body)`. Enough for health, metrics and the tests' malformed requests,
/// which a full client would refuse to send.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    json: Option<&str>,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = json.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let status = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Children of every thread of `pid` (workers are spawned by a thread).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            list.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// One process's name and resident memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    /// Its pid.
    pub pid: u32,
    /// Its executable name (`comm`, at most 15 bytes).
    pub name: String,
    /// Resident set in bytes (`None` once it is gone).
    pub rss_bytes: Option<u64>,
}

impl Process {
    /// Reads `/proc/PID`.
    pub fn read(pid: u32) -> Self {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        let rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb * 1024);
        Self {
            pid,
            name,
            rss_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = Process::read(std::process::id());
        assert!(me.rss_bytes.is_some_and(|b| b > 1 << 20), "{me:?}");
        assert!(!me.name.is_empty());
        assert_eq!(Process::read(u32::MAX).rss_bytes, None);
    }
}
