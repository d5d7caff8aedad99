//! The seed project's published figures (`data/seed.toml`: its ranking,
//! its pipeline table and the key insights it drew from them) and the
//! tables of `SUMMARY.md` that set our measurements beside them, each of
//! the seed's insights re-evaluated on our numbers.

use std::fmt::Write as _;

use serde::Deserialize;

use crate::load::Measurement;
use crate::report::{ExperimentResult, noise, stability, trusted};

/// The seed's figures, as its README printed them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// Where they come from (machine, model, precision).
    pub source: String,
    /// Its ranking's rows whose experiments we run.
    pub ranking: Vec<SeedRank>,
    /// Its pipeline table.
    pub pipeline: Vec<SeedRow>,
    /// Its key insights about the pipeline table.
    pub insight: Vec<SeedInsight>,
}

/// One row of the seed's ranking.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRank {
    /// Its rank.
    pub rank: usize,
    /// Its name for the experiment.
    pub name: String,
    /// Our experiment of the same name and intent.
    pub experiment: String,
    /// Its throughput, pairs/s.
    pub pairs_per_second: f64,
    /// Its latency, ms.
    pub latency_ms: f64,
    /// Its label ("Best throughput", "Best balance", …).
    pub label: String,
}

/// One row of the seed's pipeline table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRow {
    /// How insights name the row.
    pub key: String,
    /// Tokenizer only, inference only or the full pipeline.
    pub stage: String,
    /// Tokenizer workers (`-`: none involved).
    pub tokenizers: String,
    /// Model workers.
    pub models: String,
    /// The tokenizer's own batch parallelism: on, off or `-`.
    pub parallelism: String,
    /// Our experiment that measures the same.
    pub experiment: String,
    /// The label of our variant that does the same.
    pub variant: String,
    /// Requests per second.
    pub rps: f64,
    /// Pairs per second.
    pub samples_per_second: f64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// One of the seed's key insights: a ratio of two rows' throughput, and
/// the range of that ratio in which the claim holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedInsight {
    /// The claim, in the seed's words.
    pub text: String,
    /// The row whose throughput is the numerator.
    pub row: String,
    /// The row it is compared with.
    pub against: String,
    /// The claim holds from this ratio …
    pub holds_from: f64,
    /// … up to this one.
    #[serde(default = "unbounded")]
    pub holds_to: f64,
}

fn unbounded() -> f64 {
    f64::INFINITY
}

/// The seed's figures shipped with ce-bench.
pub fn seed() -> Result<Seed, String> {
    toml::from_str(include_str!("../data/seed.toml")).map_err(|e| format!("data/seed.toml: {e}"))
}

/// Our measurement of a seed pipeline row: the row's variant of its
/// experiment, at the largest request size, at the highest concurrency up
/// to the seed's 16 whose measurement was stable (the highest measured when
/// none was).
pub fn our_row<'a>(results: &'a [ExperimentResult], row: &SeedRow) -> Option<&'a Measurement> {
    let r = results.iter().find(|r| r.name == row.experiment)?;
    let v = r.variants.iter().find(|v| v.label == row.variant)?;
    let passages = v.measurements.iter().map(|m| m.passages).max()?;
    let at_size = || {
        v.measurements
            .iter()
            .filter(move |m| m.passages == passages && m.concurrency.unwrap_or(0) <= 16)
    };
    let highest = |m: &&Measurement| m.concurrency.unwrap_or(0);
    at_size()
        .filter(|m| trusted(m))
        .max_by_key(highest)
        .or_else(|| at_size().max_by_key(highest))
}

/// Two rows' measurements at one load, so that their ratio compares like
/// with like: the largest request size both have, at the highest
/// concurrency up to 16 where both were stable (the highest both measured
/// when there is none).
fn same_load<'a>(
    results: &'a [ExperimentResult],
    row: &SeedRow,
    against: &SeedRow,
) -> Option<(&'a Measurement, &'a Measurement)> {
    let levels = |row: &SeedRow| {
        results
            .iter()
            .find(|r| r.name == row.experiment)
            .and_then(|r| r.variants.iter().find(|v| v.label == row.variant))
            .map(|v| v.measurements.iter().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (mine, theirs) = (levels(row), levels(against));
    let pairs: Vec<(&Measurement, &Measurement)> = mine
        .iter()
        .flat_map(|a| theirs.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| {
            a.passages == b.passages
                && a.concurrency == b.concurrency
                && a.concurrency.unwrap_or(0) <= 16
        })
        .collect();
    let key = |p: &&(&Measurement, &Measurement)| (p.0.passages, p.0.concurrency.unwrap_or(0));
    pairs
        .iter()
        .filter(|(a, b)| trusted(a) && trusted(b))
        .max_by_key(key)
        .or_else(|| pairs.iter().max_by_key(key))
        .copied()
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

/// The pipeline table, ours beside the seed's, and each of its insights
/// re-evaluated on our numbers.
pub fn pipeline_tables(md: &mut String, seed: &Seed, results: &[ExperimentResult]) {
    let _ = writeln!(
        md,
        "\n## The seed's pipeline table, side by side\n\nOurs: the row's variant at its \
         largest request (128 passages) and the highest concurrency up to the seed's 16 whose \
         measurement was stable (the highest measured when none was); \
         seed: {}. \"Parallelism on\" is the tokenizer's own batch parallelism (the tokenizer \
         workers' `tokenizer_threads` > 1), as the seed's `TOKENIZERS_PARALLELISM=true`.\n",
        seed.source
    );
    let _ = writeln!(
        md,
        "| configuration | tok | model | parallelism | load | RPS | samples/s | mean ms | p50 ms | p95 ms | p99 ms | stability | seed RPS | seed samples/s | seed mean | seed p50 | seed p95 | seed p99 | samples/s ours ÷ seed |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &seed.pipeline {
        let ours = our_row(results, row);
        let cells = match ours {
            Some(m) => format!(
                "c={} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {}",
                m.concurrency.unwrap_or(0),
                m.requests_per_second,
                m.pairs_per_second,
                m.mean_ms,
                m.p50_ms,
                m.p95_ms,
                m.p99_ms,
                stability(m)
            ),
            None => "not measured | | | | | | | ".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {cells} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            row.stage,
            row.tokenizers,
            row.models,
            row.parallelism,
            row.rps,
            row.samples_per_second,
            row.mean_ms,
            row.p50_ms,
            row.p95_ms,
            row.p99_ms,
            ours.map_or("-".into(), |m| format!(
                "{:.2}×",
                ratio(m.pairs_per_second, row.samples_per_second)
            )),
        );
    }
    let _ = writeln!(
        md,
        "\n### The seed's key insights, re-evaluated\n\nEach is a ratio of two rows' samples/s, \
         ours taken at one load for both (the highest concurrency up to 16 where both were \
         stable); it holds when ours falls in the range the claim needs.\n"
    );
    let _ = writeln!(md, "| seed's insight | seed | ours | p50 ours | holds? |");
    let _ = writeln!(md, "|---|---:|---:|---:|---|");
    for insight in &seed.insight {
        let find = |key: &str| seed.pipeline.iter().find(|r| r.key == key);
        let (Some(row), Some(against)) = (find(&insight.row), find(&insight.against)) else {
            let _ = writeln!(md, "| {} | | | | rows not in the table |", insight.text);
            continue;
        };
        let seed_ratio = ratio(row.samples_per_second, against.samples_per_second);
        let (ours, verdict) = match same_load(results, row, against) {
            Some((a, b)) => {
                let x = ratio(a.pairs_per_second, b.pairs_per_second);
                let range = insight.holds_from..=insight.holds_to;
                // A claim of no effect also holds when the two cannot be
                // told apart.
                let holds =
                    range.contains(&x) || (range.contains(&1.0) && (x - 1.0).abs() <= noise(a, b));
                let needs = if insight.holds_to.is_finite() {
                    format!("needs {:.2}–{:.2}×", insight.holds_from, insight.holds_to)
                } else {
                    format!("needs ≥ {:.2}×", insight.holds_from)
                };
                let mut verdict = match (holds, trusted(a) && trusted(b)) {
                    (true, true) => "holds".to_string(),
                    (false, true) => format!("does not hold ({needs})"),
                    (holds, false) => format!(
                        "inconclusive: from an unstable measurement (it would {}hold; {needs})",
                        if holds { "" } else { "not " }
                    ),
                };
                if (x - 1.0).abs() <= noise(a, b) {
                    let _ = write!(
                        verdict,
                        "; the two are within noise (±{:.0}%)",
                        noise(a, b) * 100.0
                    );
                }
                (
                    format!(
                        "{x:.2}× (c={}) | {:.0} → {:.0} ms",
                        a.concurrency.unwrap_or(0),
                        b.p50_ms,
                        a.p50_ms
                    ),
                    verdict,
                )
            }
            _ => ("- | -".into(), "not measured".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {seed_ratio:.2}× | {ours} | {verdict} |",
            insight.text
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_seed_figures_parse_and_every_insight_names_two_rows() {
        let seed = seed().unwrap();
        assert_eq!(seed.ranking.len(), 6);
        assert_eq!(seed.pipeline.len(), 8);
        for i in &seed.insight {
            for key in [&i.row, &i.against] {
                assert!(seed.pipeline.iter().any(|r| &r.key == key), "{key}");
            }
            assert!(i.holds_from <= i.holds_to);
        }
    }
}
