//! A tiny experiment end to end: two server variants, seconds long, through
//! the real `ce-bench` and `ce-supervisor` executables; it must produce the
//! Markdown page, JSON, CSV time series, plots and the summary.

use std::path::Path;
use std::process::Command;

#[test]
fn a_two_variant_experiment_writes_every_result_file() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ce-bench"));
    assert!(
        exe.with_file_name("ce-supervisor").exists(),
        "ce-supervisor missing beside ce-bench: run `cargo test --workspace` or `cargo build -p supervisor`"
    );
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm-l6-ce");
    let dir = std::env::temp_dir().join(format!("ce-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tiny.toml");
    std::fs::write(
        &config,
        r#"
name = "tiny"
description = "Two batch limits, a few seconds each"

[server]
max_batch_size = [4, 16]
tokenizers = 1

[client]
batch_sizes = [8]
concurrency = [1, 2]
warmup_s = 0.5
window_s = 1.0
stable_windows = 2
tolerance = 0.5
max_windows = 3
"#,
    )
    .unwrap();
    let out = dir.join("out");
    let run = Command::new(exe)
        .arg("experiment")
        .arg(&config)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(run.success(), "ce-bench experiment failed: {run}");
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let md = read("results/tiny_results.md");
    assert!(md.contains("| max_batch_size=4 | 8 | c=1 |"), "{md}");
    assert!(md.contains("| max_batch_size=16 | 8 | c=2 |"), "{md}");
    assert!(md.contains("**Insight:**"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&read("results/tiny.json")).unwrap();
    assert_eq!(json["variants"].as_array().unwrap().len(), 2);
    for v in json["variants"].as_array().unwrap() {
        assert!(v["error"].is_null(), "{v}");
        for m in v["measurements"].as_array().unwrap() {
            assert!(m["pairs_per_second"].as_f64().unwrap() > 0.0, "{m}");
            assert!(m["errors"].as_object().unwrap().is_empty(), "{m}");
        }
        assert!(v["padding_ratio"].as_f64().unwrap() >= 1.0, "{v}");
    }
    let csv = read("distribution/tiny.csv");
    assert!(csv.lines().count() > 4, "{csv}");
    assert!(csv.starts_with("variant,passages,concurrency,rate,second,"));
    for plot in ["tiny_throughput.svg", "tiny_latency.svg", "tiny_pareto.svg"] {
        let svg = read(&format!("results/{plot}"));
        assert!(
            svg.contains("<svg") && svg.contains("max_batch_size"),
            "{plot}"
        );
        assert!(md.contains(plot), "{plot} not linked");
    }
    let summary = Command::new(exe)
        .args(["summary", "--slo-p99-ms", "60000", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        summary.status.success(),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    let text = read("results/SUMMARY.md");
    assert!(text.contains("| 1 | tiny |"), "{text}");
    assert!(text.contains("Best under p99 ≤ 60000 ms"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
