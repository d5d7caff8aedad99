//! `ce-serve-bench`: the bare engine against the same requests served end
//! to end through a real `ce-supervisor` over gRPC, in one run.
//!
//! ```text
//! scripts/bench_serve.sh                       # R=1,T=1 and R=2,T=1
//! ```
//!
//! The engine baseline scores each request (1 query × 128 passages) as one
//! batch with all cores, before and after the served runs (their mean is
//! the baseline, their spread the drift). Each topology is a fresh
//! `ce-supervisor` (found beside this executable) fed by `--concurrency`
//! clients so that its replicas never wait for work.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use ce_bench::Request;
use ce_bench::server::Supervisor;
use ce_bench::throughput::{StandardRun, engine_rate, served_rate};
use ce_common::TokenBatch;
use clap::Parser;
use model_worker::{Engine, EngineConfig};
use serde::Serialize;
use tokenizer_worker::Truncation;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Bare engine vs end-to-end serving on the standard workload"
)]
struct Args {
    #[command(flatten)]
    run: StandardRun,
    /// Topologies as REPLICASxTOKENIZERS.
    #[arg(long, default_value = "1x1,2x1", value_delimiter = ',')]
    topologies: Vec<String>,
    /// Extra ce-supervisor flags, e.g. `--server-args='--tokenize-chunk 128'`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    server_args: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Served {
    replicas: usize,
    tokenizers: usize,
    pairs_per_second: f64,
    ratio_to_engine: f64,
    overhead_percent: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    pairs: usize,
    engine_threads: usize,
    engine_pairs_per_second_before: f64,
    engine_pairs_per_second_after: f64,
    served: Vec<Served>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // SAFETY: first statement after argument parsing; no thread exists yet.
    let cores = unsafe { model_worker::threads::use_every_core() }?;
    let engine = Engine::load(&EngineConfig::new(&args.run.model)).context("loading the model")?;
    let requests: Vec<Request> = args.run.requests();
    let batches: Vec<TokenBatch> = requests
        .iter()
        .map(|r| {
            engine
                .tokenizer()
                .encode_query(&r.query, &r.passages, Truncation::Right)
        })
        .collect::<Result<_, _>>()?;
    let pairs: usize = batches.iter().map(TokenBatch::len).sum();
    eprintln!("engine baseline ({pairs} pairs, {cores} threads)…");
    let before = engine_rate(&engine, &batches)?;
    let requests = Arc::new(requests);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut measured = Vec::new();
    for topology in &args.topologies {
        let (r, t) = topology
            .split_once('x')
            .context("topology is REPLICASxTOKENIZERS")?;
        let (replicas, tokenizers): (usize, usize) = (r.parse()?, t.parse()?);
        eprintln!("served, {replicas} replica(s), {tokenizers} tokenizer(s)…");
        // Whole requests fit one batch, as in the engine baseline.
        let mut server_args: Vec<String> = [
            "--replicas",
            &replicas.to_string(),
            "--tokenizers",
            &tokenizers.to_string(),
            "--max-batch-size",
            &args.run.passages.to_string(),
            "--max-batch-tokens",
            "65536",
        ]
        .map(String::from)
        .into();
        server_args.extend(args.server_args.split_whitespace().map(String::from));
        let mut sup = Supervisor::start(&args.run.model, &server_args)?;
        let rate = runtime.block_on(served_rate(
            &mut sup,
            requests.clone(),
            args.run.concurrency,
        ))?;
        drop(sup);
        measured.push((replicas, tokenizers, rate));
    }
    eprintln!("engine baseline again…");
    let after = engine_rate(&engine, &batches)?;
    let baseline = (before + after) / 2.0;
    let served: Vec<Served> = measured
        .into_iter()
        .map(|(replicas, tokenizers, rate)| Served {
            replicas,
            tokenizers,
            pairs_per_second: rate,
            ratio_to_engine: rate / baseline,
            overhead_percent: (1.0 - rate / baseline) * 100.0,
        })
        .collect();
    println!("## Bare engine vs served (standard workload, {pairs} pairs, {cores} cores)\n");
    println!("| | pairs/s | vs engine |");
    println!("|---|---|---|");
    println!(
        "| engine, {cores} threads (before / after) | {before:.1} / {after:.1} | 1.000 (drift {:+.1}%) |",
        (after / before - 1.0) * 100.0
    );
    for s in &served {
        println!(
            "| served R={} T={} | {:.1} | {:.3} (overhead {:+.1}%) |",
            s.replicas, s.tokenizers, s.pairs_per_second, s.ratio_to_engine, s.overhead_percent
        );
    }
    let report = Report {
        pairs,
        engine_threads: cores,
        engine_pairs_per_second_before: before,
        engine_pairs_per_second_after: after,
        served,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
