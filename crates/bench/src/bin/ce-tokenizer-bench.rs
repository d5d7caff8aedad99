//! `ce-tokenizer-bench`: pair tokenization on one thread, the way a
//! tokenizer worker does it, two ways in the same run: every pair encoded
//! whole (the query tokenized again for each document) and the query
//! tokenized once per request with its ids reused for every pair. Checks
//! that both give identical ids, then reports pairs per second and the
//! ratio, on the standard workload and with longer queries.
//!
//! ```text
//! cargo run --release -p ce-bench --bin ce-tokenizer-bench
//! ```

use std::time::Instant;

use anyhow::{Context, ensure};
use ce_bench::{Workload, WorkloadConfig};
use clap::Parser;
use tokenizer_worker::{PairTokenizer, Truncation};

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tokenizer = PairTokenizer::from_file(&args.model.join("tokenizer.json"), args.max_length)
        .context("loading the tokenizer")?;
    println!("| workload | per pair (pairs/s) | query once (pairs/s) | speed-up |");
    println!("|---|---:|---:|---:|");
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
        let started = Instant::now();
        let mut once = Vec::new();
        for r in &requests {
            let query = tokenizer.encode_query_ids(&r.query, Truncation::Right)?;
            for p in &r.passages {
                once.push(tokenizer.encode_with_query(&query, p, Truncation::Right)?);
            }
        }
        let query_once = pairs / started.elapsed().as_secs_f64();
        ensure!(whole == once, "{name}: the two ways disagree");
        println!(
            "| {name} | {per_pair:.0} | {query_once:.0} | {:.2}× |",
            query_once / per_pair
        );
    }
    Ok(())
}
