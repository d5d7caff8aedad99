//! Shutdown: wait for SIGTERM or SIGINT, then drain — in-flight requests
//! within `shutdown_grace_ms`, then the workers within `worker_grace_ms`.

use std::time::Duration;

use futures_util::future::join_all;

use super::listeners::FrontEnds;
use crate::config::Settings;
use crate::workers::WorkerProcess;

/// How long past its own grace a worker may take to exit (the process
/// ending, being reaped) before we stop waiting; what is left ends with us
/// through its parent-death signal.
const EXIT_MARGIN: Duration = Duration::from_secs(3);

/// The drain's timings, from the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// How long in-flight requests may take to finish.
    pub request_grace: Duration,
    /// Then how long each worker may take to finish and exit.
    pub worker_grace: Duration,
}

impl Shutdown {
    /// The timings `settings` ask for.
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            request_grace: Duration::from_millis(settings.shutdown_grace_ms),
            worker_grace: Duration::from_millis(settings.worker_grace_ms),
        }
    }

    /// Lets the servers drain (they were told to stop), then stops the workers.
    pub async fn drain(&self, front_ends: FrontEnds, workers: Vec<WorkerProcess>) {
        let grace = self.request_grace;
        let drained = tokio::time::timeout(grace, async {
            let _ = front_ends.grpc.await;
            let _ = front_ends.http.await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?grace, "grace period over with requests still in flight");
        }
        for w in &workers {
            w.shutdown(self.worker_grace);
        }
        let exited = tokio::time::timeout(
            self.worker_grace + EXIT_MARGIN,
            join_all(workers.iter().map(WorkerProcess::died)),
        )
        .await;
        if exited.is_err() {
            tracing::warn!(
                "some workers did not exit in time; they end with us (parent-death signal)"
            );
        }
    }
}

/// SIGTERM and SIGINT, watched from [`Termination::install`] on: once
/// installed, either signal starts the drain instead of killing the
/// process (Ctrl-C drains exactly like SIGTERM).
#[derive(Debug)]
pub struct Termination {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Termination {
    /// Installs the handlers (replacing the default actions).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when either signal arrives (or has arrived since install).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
