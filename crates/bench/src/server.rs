//! A `ce-supervisor` started by a benchmark: found beside the running
//! executable, on free loopback ports, stopped (SIGTERM) when dropped;
//! and the process tree it owns, for per-process figures.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `ce-supervisor`.
#[derive(Debug)]
pub struct Supervisor {
    child: Child,
    /// The gRPC endpoint (`http://127.0.0.1:PORT`).
    pub grpc: String,
    /// The HTTP port.
    pub http_port: u16,
}

impl Supervisor {
    /// Starts `ce-supervisor --model MODEL ARGS…` on free loopback ports.
    pub fn start(model: &str, args: &[String]) -> Result<Self, ServerError> {
        let exe = std::env::current_exe()?.with_file_name("ce-supervisor");
        if !exe.exists() {
            return Err(ServerError::Missing(exe));
        }
        let (grpc, http) = (free_port()?, free_port()?);
        let child = Command::new(exe)
            .args(["--model", model])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(args)
            .env("CE_LOG", std::env::var("CE_LOG").unwrap_or("warn".into()))
            .stdin(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            grpc: format!("http://127.0.0.1:{grpc}"),
            http_port: http,
        })
    }

    /// The supervisor's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a one-pair request is answered; returns a client.
    pub async fn connect(
        &mut self,
        limit: Duration,
    ) -> Result<CrossEncoderClient<Channel>, ServerError> {
        let until = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
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
        use std::io::{Read, Write};
        let fetch = || -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        };
        fetch()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The supervisor and its workers now.
    pub fn processes(&self) -> Vec<Process> {
        let pid = self.pid();
        let mut all = vec![Process::read(pid)];
        all.extend(children(pid).into_iter().map(Process::read));
        all
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
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
