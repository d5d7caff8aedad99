//! `ce-score`: score (query, passage) pairs from JSON lines.
//!
//! ```text
//! ce-score --model models/minilm-l6-ce < pairs.jsonl > scores.jsonl
//! ```
//!
//! Each input line is either `{"query": "...", "passage": "..."}` or
//! `{"query": "...", "passages": ["...", ...]}`; each output line answers the
//! input line at the same position: `{"score": x}` or `{"scores": [...]}`, or
//! `{"error": "..."}` for a line that cannot be scored. Exit status 1 if any
//! line failed.

use std::io::{BufRead, BufWriter, Write};

use anyhow::Context;
use clap::Parser;
use model_worker::{DeviceSpec, Engine, EngineConfig, WeightDType};
use serde::Deserialize;
use serde_json::json;
use tokenizer_worker::Truncation;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Score (query, passage) pairs from JSON lines with a cross-encoder"
)]
struct Args {
    /// Model directory or hub id.
    #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
    model: String,
    /// Weight precision: f32, f16, bf16, q8_0, q4_0, i8 (CPU).
    #[arg(long, env = "CE_DTYPE", default_value = "f32")]
    dtype: WeightDType,
    /// Device: cpu, cuda:N, metal:N.
    #[arg(long, env = "CE_DEVICE", default_value = "cpu")]
    device: DeviceSpec,
    /// Compute threads (default: all cores).
    #[arg(long, env = "CE_THREADS")]
    threads: Option<usize>,
    /// Longest pair in tokens (capped by the model).
    #[arg(long, env = "CE_MAX_LENGTH", default_value_t = 512)]
    max_length: usize,
    /// Input lines scored together in one batch.
    #[arg(long, default_value_t = 64)]
    batch_lines: usize,
    /// Print raw logits instead of the model's score activation.
    #[arg(long)]
    raw: bool,
    /// Truncation: right, left or off (over-long pairs become errors).
    #[arg(long, default_value = "right", value_parser = parse_truncation)]
    truncation: Truncation,
}

fn parse_truncation(s: &str) -> Result<Truncation, String> {
    match s {
        "right" => Ok(Truncation::Right),
        "left" => Ok(Truncation::Left),
        "off" | "none" => Ok(Truncation::Off),
        _ => Err(format!("unknown truncation {s:?} (right, left, off)")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    query: String,
    #[serde(default)]
    passage: Option<String>,
    #[serde(default)]
    passages: Option<Vec<String>>,
    /// An LLM reranker's instruction for this line (its default where absent).
    #[serde(default)]
    instruction: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        // SAFETY: first statement after argument parsing; no thread exists yet.
        unsafe { model_worker::threads::set_compute_threads(threads) }?;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let mut config = EngineConfig::new(&args.model);
    config.dtype = args.dtype;
    config.device = args.device;
    config.max_length = args.max_length;
    let engine = Engine::load(&config).with_context(|| format!("loading {}", args.model))?;
    let activation = engine.info().score_activation;

    let stdin = std::io::stdin().lock();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut failed = 0usize;
    let mut lines = stdin.lines().enumerate().peekable();
    while lines.peek().is_some() {
        let chunk: Vec<(usize, std::io::Result<String>)> =
            lines.by_ref().take(args.batch_lines.max(1)).collect();
        for (number, text) in chunk {
            let text = text.context("reading standard input")?;
            if text.trim().is_empty() {
                continue;
            }
            let reply = match score_line(&engine, &text, args.truncation) {
                Ok((scores, single)) => {
                    let relevant = engine.config().relevant_label;
                    let scores: Vec<f32> = scores
                        .logits
                        .chunks(scores.num_labels.max(1))
                        .map(|row| match args.raw {
                            true => row.get(relevant).copied().unwrap_or(f32::NAN),
                            false => activation.score(row, relevant),
                        })
                        .collect();
                    if single {
                        json!({ "score": scores[0] })
                    } else {
                        json!({ "scores": scores })
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("line {}: {e}", number + 1);
                    json!({ "error": e })
                }
            };
            writeln!(out, "{reply}")?;
        }
        out.flush()?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} line(s) could not be scored");
    }
    Ok(())
}

/// Scores one input line; `true` when it held a single passage.
fn score_line(
    engine: &Engine,
    text: &str,
    truncation: Truncation,
) -> Result<(model_worker::BatchScores, bool), String> {
    let line: Line = serde_json::from_str(text).map_err(|e| format!("invalid JSON line: {e}"))?;
    let (passages, single) = match (line.passage, line.passages) {
        (Some(p), None) => (vec![p], true),
        (None, Some(ps)) if !ps.is_empty() => (ps, false),
        (None, Some(_)) => return Err("\"passages\" is empty".into()),
        (Some(_), Some(_)) => return Err("give \"passage\" or \"passages\", not both".into()),
        (None, None) => return Err("missing \"passage\" (or \"passages\")".into()),
    };
    let scores = engine
        .score_query_for(
            &line.query,
            line.instruction.as_deref(),
            &passages,
            truncation,
        )
        .map_err(|e| e.to_string())?;
    Ok((scores, single))
}
