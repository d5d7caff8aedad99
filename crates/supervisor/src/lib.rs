//! `ce-supervisor`: serves a cross-encoder through tokenizer and model
//! worker processes connected by shared-memory rings (see
//! `docs/ARCHITECTURE.md`).
//!
//! Life of a request, by module:
//! * [`grpc`], [`http`] — the front ends: translate wire types, call [`api`].
//! * [`api`] — validation, rerank/score logic, ranking, truncation, request
//!   metrics, `Info`; [`api::ApiError`] and its gRPC and HTTP mappings.
//! * [`core`] — admission ([`request`]), chunked tokenization
//!   ([`tokenize`]), then the scheduling queue.
//! * [`scheduler`] — one actor owning the queue: [`batcher`] picks batches,
//!   the router leases the replica with the fewest in flight, scores are
//!   matched back to their requests.
//! * [`workers`] — the worker pools, their typed clients and processes.
//! * [`server`] — start-up, listeners, readiness and shutdown.
//! * [`config`], [`metrics`], [`logging`], [`auth`] — settings, Prometheus,
//!   logs, the optional API key.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod batcher;
pub mod chunks;
pub mod config;
pub mod core;
pub mod gpu;
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
