//! The worker processes as the supervisor sees them.
//!
//! * [`process`] — one process: spawn, handshake, rings, control channel,
//!   heartbeat watchdog, death.
//! * [`client`] — the typed clients: [`TokenizerClient::tokenize`] and
//!   [`ReplicaClient::score`]; the only place frames are built and read.
//! * [`pool`] — one [`WorkerPool`] per role: slots, restarts, back-off,
//!   membership and the leases that count work in flight.
//! * [`isolation`] — what happens to work whose worker died holding it.

pub mod client;
pub mod isolation;
pub mod pool;
pub mod process;

pub use client::{Client, JobError, ReplicaClient, Scores, Tokenized, TokenizerClient, Worked};
pub use pool::{Lease, Share, Starter, WorkerPool};
pub use process::{StartError, WorkerFailure, WorkerFigures, WorkerProcess, WorkerSpec};
