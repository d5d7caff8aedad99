//! `ce-supervisor`: serves a cross-encoder through tokenizer and model
//! worker processes connected by shared-memory rings (DESIGN.md §1).
//!
//! Life of a request, by module:
//! * [`grpc`], [`http`] — the front ends: validate, then call [`core`].
//! * [`core`] — admission ([`request`]), chunked tokenization
//!   ([`tokenize`]), then the scheduling queue.
//! * [`scheduler`] — one actor owning the queue: [`batcher`] picks batches,
//!   the router sends each to the replica with the fewest in flight, scores
//!   are matched back to their requests.
//! * [`workers`] — a worker process seen from here: spawn, handshake,
//!   rings, control channel, death.
//! * [`server`] — start-up, readiness, signals and shutdown.
//! * [`config`], [`metrics`], [`logging`], [`auth`] — settings, Prometheus,
//!   logs, the optional API key.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod auth;
pub mod batcher;
pub mod config;
pub mod core;
pub mod grpc;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod server;
pub mod tls;
pub mod tokenize;
pub mod workers;
