//! `ce-tokenizer-bench`: pair tokenization the way a tokenizer worker does
//! it, three ways in the same run: every pair encoded whole on one thread
//! (the query tokenized again for each document), the query tokenized once
//! per request with its ids reused for every pair (a worker's text jobs,
//! `--chunk` documents each, on one thread: the default worker), and the
//! same jobs with the tokenizers library's batch parallelism on over
//! `--threads` threads (`--tokenizer-threads`). Checks that all three give
//! identical ids, then reports pairs per second and the ratios, on the
//! standard workload and with longer queries.
//!
//! ```text
//! cargo run --release -p ce-bench --bin ce-tokenizer-bench
//! ```

use std::time::Instant;

use anyhow::{Context, ensure};
use ce_bench::{Workload, WorkloadConfig};
use ce_common::TokenBatch;
use ce_common::frame::TextJob;
use clap::Parser;
use tokenizer_worker::{PairTokenizer, Truncation, job};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Pair tokenization: per pair vs the query once per request"
)]
struct Args {
    /// Model directory (its tokenizer.json).
    #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
    model: std::path::PathBuf,
    /// Requests per workload.
    #[arg(long, default_value_t = 40)]
    requests: usize,
    /// Passages per request.
    #[arg(long, default_value_t = 128)]
    passages: usize,
    /// Longest pair in tokens.
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Documents per text job (the server's `tokenize_chunk`).
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Threads of the parallel column (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokenizer = PairTokenizer::from_file(&args.model.join("tokenizer.json"), args.max_length)
        .context("loading the tokenizer")?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .context("starting the parallel column's threads")?;
    println!(
        "| workload | per pair (pairs/s) | query once (pairs/s) | speed-up | query once, {threads} threads (pairs/s) | vs per pair | vs query once |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, query_words) in [
        ("standard (4-12-word queries)", (4, 12)),
        ("200-word queries", (200, 200)),
        ("2,000-word queries", (2000, 2000)),
    ] {
        let requests: Vec<_> = Workload::new(WorkloadConfig {
            passages: args.passages,
            query_words,
            ..Default::default()
        })
        .take(args.requests)
        .collect();
        let pairs = (requests.len() * args.passages) as f64;
        let started = Instant::now();
        let mut whole = Vec::new();
        for r in &requests {
            for p in &r.passages {
                whole.push(tokenizer.encode_pair(&r.query, p, Truncation::Right)?);
            }
        }
        let per_pair = pairs / started.elapsed().as_secs_f64();
        // A worker's jobs: each request's query once, then its documents
        // `chunk` at a time.
        let jobs = |parallel: bool| -> anyhow::Result<(f64, Vec<TokenBatch>)> {
            tokenizers::utils::parallelism::set_parallelism(parallel);
            let started = Instant::now();
            let mut batches = Vec::new();
            for r in &requests {
                let query = tokenizer.encode_query_ids(&r.query, Truncation::Right)?;
                for (c, passages) in r.passages.chunks(args.chunk.max(1)).enumerate() {
                    let text = TextJob {
                        query: query.clone(),
                        passages: passages.to_vec(),
                        first_index: (c * args.chunk) as u32,
                        ..TextJob::default()
                    };
                    batches.push(
                        job::tokenize(&tokenizer, &text, parallel).map_err(anyhow::Error::msg)?,
                    );
                }
            }
            Ok((pairs / started.elapsed().as_secs_f64(), batches))
        };
        let (query_once, once) = jobs(false)?;
        let (parallel, in_parallel) = pool.install(|| jobs(true))?;
        let flat = |batches: &[TokenBatch]| -> Vec<(Vec<u32>, Vec<u32>)> {
            batches
                .iter()
                .flat_map(|b| {
                    (0..b.len()).map(|i| {
                        let range = b.range(i);
                        (
                            b.input_ids[range.clone()].to_vec(),
                            b.type_ids[range].to_vec(),
                        )
                    })
                })
                .collect()
        };
        ensure!(
            whole == flat(&once),
            "{name}: per pair and query once disagree"
        );
        ensure!(
            once == in_parallel,
            "{name}: one thread and {threads} disagree"
        );
        println!(
            "| {name} | {per_pair:.0} | {query_once:.0} | {:.2}× | {parallel:.0} | {:.2}× | {:.2}× |",
            query_once / per_pair,
            parallel / per_pair,
            parallel / query_once,
        );
    }
    Ok(())
}
