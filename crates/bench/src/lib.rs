//! Benchmarking for ce-supervisor.
//!
//! * [`workload`] — the seeded standard workload (1 query × N passages of
//!   realistic length) that every benchmark uses.
//! * [`gemm_peak`] — a GEMM peak measured on this machine, the roofline that
//!   throughput is reported against.
//! * [`experiment`] — experiment files (`conf/experiment/*.toml`) and sweeps.
//! * [`client`] — what a request calls (Rerank, Score, Tokenize,
//!   ScoreTokens) over gRPC or HTTP.
//! * [`load`] — the load generator (closed/open loop, ramp, stable windows, HDR).
//! * [`report`] — results as JSON, Markdown, CSV and SVG plots; the summary.
//! * [`seed`] — the seed project's published figures, set beside ours in
//!   the summary.
//! * [`server`] — a `ce-supervisor` started for a benchmark, and the
//!   memory of its processes.
//! * [`throughput`] — closed-loop pairs/s of the bare engine and of a
//!   served model.
//! * `src/bin/ce-engine-bench.rs` — the engine benchmark (pairs/s, tokens/s,
//!   padding, GFLOP/s and % of peak for every dtype).
//! * `src/bin/ce-vs-python.rs` — ours (engine and server, f32 and i8)
//!   against sentence-transformers on the same pairs, with the roofline.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod client;
pub mod experiment;
pub mod gemm_peak;
pub mod load;
pub mod report;
pub mod seed;
pub mod server;
pub mod throughput;
pub mod workload;

pub use workload::{Request, Workload, WorkloadConfig};
