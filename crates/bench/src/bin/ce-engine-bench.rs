//! `ce-engine-bench`: the bare engine's speed on the standard workload, for
//! every dtype, against the f32 GEMM peak and (for i8 and bf16) the peak of
//! the CPU encoder's own int8 and bf16 products, measured in the same run.
//!
//! ```text
//! cargo run --release -p ce-bench --bin ce-engine-bench -- --threads 2
//! ```
//!
//! Batches are whole requests (1 query × `--passages` passages) in request
//! order, as a server would compute them without cross-request batching.
//!
//! On a GPU (`--device cuda:0`, from a build with the `cuda` feature:
//! `scripts/build_cuda.sh --bench`), `--fidelity` also scores the workload
//! with the CPU engine in f32 and reports each dtype's distance from it, and
//! `--golden tests/fixtures/golden_minilm_l6_ce.json` each dtype's distance
//! from transformers' logits on the golden pairs (one by one and in one
//! mixed-length batch).

use std::time::{Duration, Instant};

use anyhow::Context;
use ce_bench::gemm_peak::{self, GemmPeak, Reduced, ReducedPeak};
use ce_bench::{Workload, WorkloadConfig};
use ce_common::TokenBatch;
use clap::Parser;
use model_worker::encoder::cpu::profile;
use model_worker::{DeviceSpec, Engine, EngineConfig, WeightDType, fidelity};
use tokenizer_worker::Truncation;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark the cross-encoder engine on the standard workload"
)]
struct Args {
    /// Model directory or hub id.
    #[arg(long, env = "CE_MODEL", default_value = "models/minilm-l6-ce")]
    model: String,
    /// Comma-separated dtypes to measure.
    #[arg(
        long,
        default_value = "f32,f16,bf16,q8_0,q4_0,i8",
        value_delimiter = ','
    )]
    dtypes: Vec<WeightDType>,
    /// Pairs to score per dtype.
    #[arg(long, default_value_t = 1024)]
    pairs: usize,
    /// Passages per request (= pairs per batch).
    #[arg(long, default_value_t = 128)]
    passages: usize,
    /// Stop a dtype early after this many seconds (slow dtypes report fewer pairs).
    #[arg(long, default_value_t = 120.0)]
    max_seconds: f64,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Device the engines run on: cpu, cuda:N, metal:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
    /// Score the workload with the CPU engine in f32 first, and report each
    /// dtype's largest |Δ| from it and Kendall's τ of each batch's ranking
    /// (the mean and the worst batch).
    #[arg(long)]
    fidelity: bool,
    /// The golden pairs (tests/fixtures/golden_minilm_l6_ce.json, written by
    /// scripts/golden.py): report each dtype's largest |logit − transformers|
    /// over them, scored one by one and in one mixed-length batch.
    #[arg(long)]
    golden: Option<std::path::PathBuf>,
    /// Workload seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Time the CPU encoder's stages (embeddings, each product, attention,
    /// activation, norms, head, activation quantization) and print where
    /// each dtype's time went. Adds two clock reads per stage.
    #[arg(long)]
    profile: bool,
    /// Passes over the workload per dtype, the dtypes interleaved (every
    /// dtype once per round, each round starting one dtype later), so that
    /// a machine whose speed drifts during the run slows every dtype alike.
    /// pairs/s is the median pass's, "vs f32" the median of each round's
    /// ratio; `--max-seconds` holds per pass. Above 1, every engine stays
    /// loaded for the whole run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    rounds: u64,
    /// An LLM reranker's shared prompt prefix computed once (`on`), every
    /// sequence whole (`off`), or each dtype both ways (`both`).
    #[arg(long, value_enum, default_value_t = PrefixReuse::On)]
    prefix_reuse: PrefixReuse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PrefixReuse {
    On,
    Off,
    Both,
}

impl PrefixReuse {
    fn settings(self) -> &'static [bool] {
        match self {
            Self::On => &[true],
            Self::Off => &[false],
            Self::Both => &[true, false],
        }
    }
}

#[derive(Debug, serde::Serialize)]
struct DtypeResult {
    dtype: WeightDType,
    /// Whether a shared prompt prefix was computed once (LLM rerankers).
    prefix_reuse: bool,
    /// Pairs scored in a pass.
    pairs: usize,
    /// Seconds over every pass.
    seconds: f64,
    /// The median pass's (with `--rounds 1`, the only pass's).
    pairs_per_second: f64,
    /// Each round's pass, in round order.
    round_pairs_per_second: Vec<f64>,
    /// Its pairs/s over f32's (prefix reuse on) in the same round: the
    /// median over rounds.
    vs_f32: Option<f64>,
    tokens_per_second: f64,
    linear_padding_ratio: f64,
    attention_padding_ratio: f64,
    useful_gflops: f64,
    fraction_of_peak: f64,
    /// Useful work over the peak of the product this dtype's layers run
    /// (int8 or bf16 on the CPU encoder; the f32 GEMM otherwise).
    fraction_of_own_peak: f64,
    load_seconds: f64,
    /// With `--profile` on the CPU encoder: seconds per stage, over every
    /// thread.
    stages: Vec<(&'static str, f64)>,
    /// With `--fidelity`: how far its scores are from the CPU's f32.
    fidelity: Option<Fidelity>,
    /// With `--golden`: the largest |logit − transformers| on the golden pairs.
    golden_max_abs_diff: Option<f32>,
}

/// One timed pass of an engine over the workload's batches.
#[derive(Debug, Default)]
struct Pass {
    pairs: usize,
    tokens: usize,
    /// Attention slots computed, pads included.
    slots: usize,
    flops: f64,
    seconds: f64,
    /// Each batch's first logits, when they are kept for `--fidelity`.
    scored: Vec<Vec<f32>>,
    /// With `--profile`: seconds per stage over every thread.
    stages: Vec<(&'static str, f64)>,
}

impl Pass {
    /// Scores `batches` in order until they run out or `max_seconds` pass.
    fn run(
        engine: &Engine,
        batches: &[TokenBatch],
        batch_flops: &[f64],
        max_seconds: f64,
        profiled: bool,
        keep_scores: bool,
    ) -> anyhow::Result<Self> {
        let mut pass = Pass::default();
        profile::enable(profiled);
        let started = Instant::now();
        for (batch, batch_flop) in batches.iter().zip(batch_flops) {
            let scores = engine.score(batch)?;
            if keep_scores {
                pass.scored.push(scores.first_logits());
            }
            pass.pairs += batch.len();
            pass.tokens += scores.tokens;
            pass.slots += scores.attention_slots;
            pass.flops += batch_flop;
            if started.elapsed().as_secs_f64() > max_seconds {
                break;
            }
        }
        pass.seconds = started.elapsed().as_secs_f64();
        if profiled {
            pass.stages = profile::seconds()
                .into_iter()
                .map(|(stage, s)| (stage.as_str(), s))
                .collect();
        }
        profile::enable(false);
        Ok(pass)
    }

    fn pairs_per_second(&self) -> f64 {
        self.pairs as f64 / self.seconds
    }
}

/// One dtype (and prefix setting) under test: its engine while it is
/// needed, and its passes.
struct Contender {
    dtype: WeightDType,
    prefix_reuse: bool,
    engine: Option<Engine>,
    runs_cpu_kernels: bool,
    load_seconds: f64,
    passes: Vec<Pass>,
    golden_max_abs_diff: Option<f32>,
}

impl Contender {
    fn new(dtype: WeightDType, prefix_reuse: bool, engine: Engine, load_seconds: f64) -> Self {
        Self {
            dtype,
            prefix_reuse,
            runs_cpu_kernels: engine.runs_cpu_kernels(),
            engine: Some(engine),
            load_seconds,
            passes: Vec::new(),
            golden_max_abs_diff: None,
        }
    }

    fn add(&mut self, pass: Pass) {
        self.passes.push(pass);
    }

    /// Pairs/s of each pass, round by round.
    fn rates(&self) -> Vec<f64> {
        self.passes.iter().map(Pass::pairs_per_second).collect()
    }

    /// The report's row: the median pass's rates (the only pass's, with
    /// one round), the ratio to f32 as the median of the rounds' own
    /// ratios, stages summed over the passes, fidelity from the first.
    fn result(
        self,
        reference: Option<&[Vec<f32>]>,
        f32_rates: Option<&[f64]>,
        gemm_peak: f64,
        own_peak: f64,
    ) -> DtypeResult {
        let rates = self.rates();
        let pairs_per_second = median(&rates);
        let first = &self.passes[0];
        // Per pair of the first pass (every pass scores the same batches
        // from the start, so the ratios hold for the median one too).
        let per_pair = |total: f64| total / first.pairs.max(1) as f64;
        let useful_gflops = pairs_per_second * per_pair(first.flops) / 1e9;
        let vs_f32 = f32_rates
            .filter(|f| f.len() == rates.len())
            .map(|f| median(&rates.iter().zip(f).map(|(r, f)| r / f).collect::<Vec<_>>()));
        let mut stages: Vec<(&'static str, f64)> =
            first.stages.iter().map(|&(n, _)| (n, 0.0)).collect();
        for pass in &self.passes {
            for ((_, total), (_, s)) in stages.iter_mut().zip(&pass.stages) {
                *total += s;
            }
        }
        DtypeResult {
            dtype: self.dtype,
            prefix_reuse: self.prefix_reuse,
            pairs: first.pairs,
            seconds: self.passes.iter().map(|p| p.seconds).sum(),
            pairs_per_second,
            round_pairs_per_second: rates,
            vs_f32,
            tokens_per_second: pairs_per_second * per_pair(first.tokens as f64),
            linear_padding_ratio: 1.0,
            attention_padding_ratio: first.slots as f64 / first.tokens.max(1) as f64,
            useful_gflops,
            fraction_of_peak: useful_gflops / gemm_peak,
            fraction_of_own_peak: useful_gflops / own_peak,
            stages,
            load_seconds: self.load_seconds,
            fidelity: reference
                .map(|want| Fidelity::of(&first.scored, &want[..first.scored.len()])),
            golden_max_abs_diff: self.golden_max_abs_diff,
        }
    }
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// A row's name: the dtype, and the prefix setting when it is off.
fn label(dtype: WeightDType, prefix_reuse: bool) -> String {
    match prefix_reuse {
        true => dtype.to_string(),
        false => format!("{dtype}, prefix reuse off"),
    }
}

/// The golden fixture's pairs: token ids and transformers' logits.
#[derive(Debug, serde::Deserialize)]
struct GoldenFixture {
    pairs: Vec<GoldenPair>,
}

#[derive(Debug, serde::Deserialize)]
struct GoldenPair {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    logits: Vec<f32>,
}

impl GoldenFixture {
    fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The engine's largest |logit − transformers| over every pair, scored
    /// alone and all together in one batch (so both the single-sequence and
    /// the length-grouped layouts are checked).
    fn max_abs_diff(&self, engine: &Engine) -> anyhow::Result<f32> {
        let batch_of = |pairs: &[GoldenPair]| {
            let mut batch = TokenBatch::default();
            for p in pairs {
                batch.push(&p.input_ids, &p.token_type_ids);
            }
            batch
        };
        let mut worst = 0f32;
        let mut compare = |logits: &[f32], pairs: &[GoldenPair]| -> anyhow::Result<()> {
            let want: Vec<f32> = pairs
                .iter()
                .flat_map(|p| p.logits.iter().copied())
                .collect();
            anyhow::ensure!(
                logits.len() == want.len(),
                "{} logits for {} expected",
                logits.len(),
                want.len()
            );
            worst = worst.max(fidelity::max_abs_diff(logits, &want));
            Ok(())
        };
        for pair in self.pairs.chunks(1) {
            compare(&engine.score(&batch_of(pair))?.logits, pair)?;
        }
        compare(&engine.score(&batch_of(&self.pairs))?.logits, &self.pairs)?;
        Ok(worst)
    }
}

/// A dtype's scores against the CPU engine's f32 on the same batches.
#[derive(Debug, serde::Serialize)]
struct Fidelity {
    /// The largest |Δ| of any logit.
    max_abs_diff: f32,
    /// Kendall's τ of each batch's ranking, averaged over batches.
    mean_kendall_tau: f64,
    /// The worst batch's τ.
    min_kendall_tau: f64,
}

impl Fidelity {
    /// `got[i]` against `want[i]`, batch by batch (first logits).
    fn of(got: &[Vec<f32>], want: &[Vec<f32>]) -> Self {
        let taus: Vec<f64> = got
            .iter()
            .zip(want)
            .filter_map(|(g, w)| fidelity::kendall_tau(g, w))
            .collect();
        Self {
            max_abs_diff: got
                .iter()
                .zip(want)
                .map(|(g, w)| fidelity::max_abs_diff(g, w))
                .fold(0.0, f32::max),
            mean_kendall_tau: taus.iter().sum::<f64>() / taus.len().max(1) as f64,
            min_kendall_tau: taus.iter().copied().fold(1.0, f64::min),
        }
    }
}

impl DtypeResult {
    /// The row's name: the dtype, and the prefix setting when it is off.
    fn label(&self) -> String {
        label(self.dtype, self.prefix_reuse)
    }
}

#[derive(Debug, serde::Serialize)]
struct Report {
    /// Where the engines ran.
    device: String,
    /// The GPU, as its driver names it (absent on the CPU).
    gpu: Option<ce_common::control::GpuDevice>,
    threads: usize,
    pairs_per_batch: usize,
    mean_tokens_per_pair: f64,
    gflop_per_pair: f64,
    tokenize_pairs_per_second: f64,
    gemm_peak: GemmPeak,
    /// The CPU encoder's int8 and bf16 product peaks, for the dtypes run.
    reduced_peaks: Vec<ReducedPeak>,
    results: Vec<DtypeResult>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        // SAFETY: first statement after argument parsing; no thread exists yet.
        unsafe { model_worker::threads::set_compute_threads(threads) }?;
    }
    let threads = model_worker::threads::compute_threads();

    eprintln!("measuring the GEMM peak with {threads} thread(s)…");
    let peak = gemm_peak::machine_peak(threads, Duration::from_secs(3));
    let reduced_peaks: Vec<ReducedPeak> = [
        (WeightDType::I8, Reduced::I8),
        (WeightDType::Bf16, Reduced::Bf16),
    ]
    .into_iter()
    .filter(|(dtype, _)| args.dtypes.contains(dtype))
    .map(|(_, precision)| {
        eprintln!("measuring the {precision:?} product peak…");
        gemm_peak::reduced_peak(precision, threads, Duration::from_secs(2))
    })
    .collect();

    // Tokenize the workload once, with the f32 engine's tokenizer.
    let reference = Engine::load(&EngineConfig::new(&args.model)).context("loading the model")?;
    let requests = args.pairs.div_ceil(args.passages);
    let mut workload = Workload::new(WorkloadConfig {
        seed: args.seed,
        passages: args.passages,
        ..Default::default()
    });
    let texts: Vec<_> = workload.by_ref().take(requests).collect();
    let started = Instant::now();
    let batches: Vec<TokenBatch> = texts
        .iter()
        .map(|r| {
            reference
                .tokenizer()
                .encode_query(&r.query, &r.passages, Truncation::Right)
        })
        .collect::<Result<_, _>>()?;
    let tokenize_rate = (requests * args.passages) as f64 / started.elapsed().as_secs_f64();
    let config = reference.config().clone();
    let reference_scores: Option<Vec<Vec<f32>>> = match args.fidelity {
        true => {
            eprintln!("scoring the workload with the CPU engine in f32 (the fidelity reference)…");
            Some(
                batches
                    .iter()
                    .map(|b| reference.score(b).map(|s| s.first_logits()))
                    .collect::<Result<_, _>>()?,
            )
        }
        false => None,
    };
    drop(reference);
    let golden = args
        .golden
        .as_deref()
        .map(GoldenFixture::read)
        .transpose()?;
    let mut gpu = None;

    let total_pairs: usize = batches.iter().map(TokenBatch::len).sum();
    let total_tokens: usize = batches.iter().map(TokenBatch::total_tokens).sum();
    let mean_tokens = total_tokens as f64 / total_pairs as f64;
    let batch_flops: Vec<f64> = batches
        .iter()
        .map(|b| {
            (0..b.len())
                .map(|i| config.flops_per_sequence(b.seq_len(i)))
                .sum()
        })
        .collect();
    let gflop_per_pair = batch_flops.iter().sum::<f64>() / total_pairs as f64 / 1e9;

    let settings: Vec<(WeightDType, bool)> = args
        .dtypes
        .iter()
        .flat_map(|&d| args.prefix_reuse.settings().iter().map(move |&r| (d, r)))
        .collect();
    let rounds = args.rounds as usize;
    let mut contenders: Vec<Contender> = Vec::with_capacity(settings.len());
    for round in 0..rounds {
        // Each round starts one dtype later, so that none always runs
        // first (or right after the same neighbour).
        for k in 0..settings.len() {
            let i = (round + k) % settings.len();
            if round == 0 {
                let (dtype, prefix_reuse) = settings[i];
                let mut engine_config = EngineConfig::new(&args.model);
                engine_config.dtype = dtype;
                engine_config.prefix_reuse = prefix_reuse;
                engine_config.device = args.device;
                let load_started = Instant::now();
                let engine = Engine::load(&engine_config)?;
                gpu = gpu.or_else(|| engine.gpu().cloned());
                let load_seconds = load_started.elapsed().as_secs_f64();
                // Warm-up: first-touch of weights and allocator growth.
                engine.score(&batches[0])?;
                contenders.push(Contender::new(dtype, prefix_reuse, engine, load_seconds));
            }
            let c = &mut contenders[i];
            let Some(engine) = &c.engine else {
                continue;
            };
            let profiled = args.profile && engine.runs_cpu_kernels();
            let pass = Pass::run(
                engine,
                &batches,
                &batch_flops,
                args.max_seconds,
                profiled,
                round == 0 && reference_scores.is_some(),
            )?;
            if round == 0 {
                c.golden_max_abs_diff = golden
                    .as_ref()
                    .map(|g| g.max_abs_diff(engine))
                    .transpose()?;
            }
            eprintln!(
                "{}{}: {:.1} pairs/s over {} pairs",
                label(c.dtype, c.prefix_reuse),
                match rounds {
                    1 => String::new(),
                    _ => format!(" (round {} of {rounds})", round + 1),
                },
                pass.pairs_per_second(),
                pass.pairs
            );
            c.add(pass);
            // One round: each engine is freed before the next loads, as
            // without rounds; several keep every engine loaded.
            if rounds == 1 {
                c.engine = None;
            }
        }
    }
    let f32_rates = contenders
        .iter()
        .find(|c| c.dtype == WeightDType::F32 && c.prefix_reuse)
        .map(|c| c.rates());
    let results: Vec<DtypeResult> = contenders
        .into_iter()
        .map(|c| {
            let own_peak = reduced_peaks
                .iter()
                .find(|p| match p.precision {
                    Reduced::I8 => c.dtype == WeightDType::I8,
                    Reduced::Bf16 => c.dtype == WeightDType::Bf16,
                })
                .filter(|_| c.runs_cpu_kernels)
                .map_or(peak.gflops, |p| p.gops);
            c.result(
                reference_scores.as_deref(),
                f32_rates.as_deref(),
                peak.gflops,
                own_peak,
            )
        })
        .collect();

    let report = Report {
        device: args.device.to_string(),
        gpu,
        threads,
        pairs_per_batch: args.passages,
        mean_tokens_per_pair: mean_tokens,
        gflop_per_pair,
        tokenize_pairs_per_second: tokenize_rate,
        gemm_peak: peak,
        reduced_peaks,
        results,
    };
    print_markdown(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_markdown(r: &Report) {
    if let Some(gpu) = &r.gpu {
        println!(
            "Device {}: {} (compute capability {}, {:.0} GiB); the GEMM peak below is the host CPU's\n",
            r.device,
            gpu.name,
            gpu.compute_capability,
            gpu.total_memory_bytes as f64 / (1u64 << 30) as f64
        );
    }
    println!(
        "Engine, {} thread(s), batches of {} pairs, {:.1} tokens/pair ({:.2} GFLOP/pair); \
         GEMM peak {:.1} GFLOP/s ({}x{}x{}); tokenizer {:.0} pairs/s (1 thread)\n",
        r.threads,
        r.pairs_per_batch,
        r.mean_tokens_per_pair,
        r.gflop_per_pair,
        r.gemm_peak.gflops,
        r.gemm_peak.m,
        r.gemm_peak.n,
        r.gemm_peak.k,
        r.tokenize_pairs_per_second,
    );
    for p in &r.reduced_peaks {
        println!("{}\n", p.describe(r.gemm_peak.gflops));
    }
    let rounds = r
        .results
        .first()
        .map_or(1, |x| x.round_pairs_per_second.len());
    if rounds > 1 {
        println!(
            "{rounds} rounds, the dtypes interleaved: pairs/s is the median pass's (the slowest and fastest passes in brackets), vs f32 the median of each round's ratio\n"
        );
    }
    println!(
        "| dtype | pairs | pairs/s | tokens/s | padded/real (linear) | padded/real (attention) | useful GFLOP/s | % of f32 GEMM peak | % of its product's peak | vs f32 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for x in &r.results {
        let vs = x.vs_f32.map_or("–".to_string(), |v| format!("{v:.2}×"));
        let rate = match x.round_pairs_per_second.len() {
            0 | 1 => format!("{:.1}", x.pairs_per_second),
            _ => {
                let (lo, hi) = x
                    .round_pairs_per_second
                    .iter()
                    .fold((f64::INFINITY, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
                format!("{:.1} ({lo:.1}–{hi:.1})", x.pairs_per_second)
            }
        };
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.3} | {:.1} | {:.1}% | {:.1}% | {} |",
            x.label(),
            x.pairs,
            rate,
            x.tokens_per_second,
            x.linear_padding_ratio,
            x.attention_padding_ratio,
            x.useful_gflops,
            100.0 * x.fraction_of_peak,
            100.0 * x.fraction_of_own_peak,
            vs
        );
    }
    println!(
        "\nUseful GFLOP/s count the whole model's FLOPs per pair; the CPU encoder (f32, bf16, i8) skips the last layer's non-[CLS] rows (~1/7 of them), and bf16 and i8 are not f32 work: they can pass 100% of the f32 peak."
    );
    print_fidelity(&r.results);
    print_profile(&r.results);
}

/// Each dtype's distance from the CPU engine's f32 (`--fidelity`) and from
/// transformers on the golden pairs (`--golden`).
fn print_fidelity(results: &[DtypeResult]) {
    let measured: Vec<&DtypeResult> = results
        .iter()
        .filter(|r| r.fidelity.is_some() || r.golden_max_abs_diff.is_some())
        .collect();
    if measured.is_empty() {
        return;
    }
    println!(
        "\nFidelity: against the CPU engine in f32 on the same batches (`--fidelity`), and against transformers on the golden pairs (`--golden`):\n"
    );
    println!(
        "| dtype | max abs diff vs CPU f32 | Kendall tau, mean | Kendall tau, worst batch | max abs diff vs transformers (golden) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let dash = || "–".to_string();
    for r in measured {
        let (diff, mean, worst) = r.fidelity.as_ref().map_or((dash(), dash(), dash()), |f| {
            (
                format!("{:.2e}", f.max_abs_diff),
                format!("{:.4}", f.mean_kendall_tau),
                format!("{:.4}", f.min_kendall_tau),
            )
        });
        let golden = r
            .golden_max_abs_diff
            .map_or_else(dash, |d| format!("{d:.2e}"));
        println!("| {} | {diff} | {mean} | {worst} | {golden} |", r.label());
    }
}

/// Where each profiled dtype's time went: the share of its CPU time per
/// stage (the quantize row is part of the products above it).
fn print_profile(results: &[DtypeResult]) {
    let profiled: Vec<&DtypeResult> = results.iter().filter(|r| !r.stages.is_empty()).collect();
    let Some(first) = profiled.first() else {
        return;
    };
    println!("\nWhere the time goes (share of each dtype's CPU time, `--profile`):\n");
    let header: Vec<String> = profiled.iter().map(|r| r.label()).collect();
    println!("| stage | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(profiled.len()));
    let quantize = profile::Stage::Quantize.as_str();
    let totals: Vec<f64> = profiled
        .iter()
        .map(|r| {
            r.stages
                .iter()
                .filter(|(name, _)| *name != quantize)
                .map(|(_, s)| s)
                .sum::<f64>()
                .max(f64::MIN_POSITIVE)
        })
        .collect();
    for (row, (name, _)) in first.stages.iter().enumerate() {
        let cells: Vec<String> = profiled
            .iter()
            .zip(&totals)
            .map(|(r, total)| format!("{:.1}%", 100.0 * r.stages[row].1 / total))
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_pass() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
    }
}
