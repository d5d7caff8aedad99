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
    // Every row says whether it is stable and how noisy its windows were.
    assert!(md.contains("Stability: ") && md.contains(", cv "), "{md}");
    assert!(md.contains("## Configuration as run"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&read("results/tiny.json")).unwrap();
    assert_eq!(json["variants"].as_array().unwrap().len(), 2);
    for v in json["variants"].as_array().unwrap() {
        assert!(v["error"].is_null(), "{v}");
        for m in v["measurements"].as_array().unwrap() {
            assert!(m["pairs_per_second"].as_f64().unwrap() > 0.0, "{m}");
            assert!(m["errors"].as_object().unwrap().is_empty(), "{m}");
        }
        assert!(v["padding_ratio"].as_f64().unwrap() >= 1.0, "{v}");
        // The server's own stage means, from /metrics deltas.
        for m in v["measurements"].as_array().unwrap() {
            for stage in ["tokenize", "queue", "wait", "ring", "forward"] {
                let ms = m["server_stages_ms"][stage].as_f64();
                assert!(ms.is_some_and(|ms| ms >= 0.0), "{stage}: {m}");
            }
            assert!(
                m["server_stages_ms"]["forward"].as_f64().unwrap() > 0.0,
                "{m}"
            );
        }
    }
    assert!(
        md.contains("| variant | passages | load | tokenize | queue | wait | ring | forward |"),
        "{md}"
    );
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

/// Runs `ce-bench experiment` on `toml` (written to `dir/<name>.toml`) and
/// returns its JSON result.
fn run_experiment(dir: &Path, name: &str, toml: &str) -> serde_json::Value {
    let exe = Path::new(env!("CARGO_BIN_EXE_ce-bench"));
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm-l6-ce");
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml).unwrap();
    let run = Command::new(exe)
        .arg("experiment")
        .arg(&config)
        .arg("--model")
        .arg(&model)
        .arg("--out")
        .arg(dir.join("out"))
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(run.success(), "ce-bench experiment {name} failed: {run}");
    let json = std::fs::read_to_string(dir.join(format!("out/results/{name}.json"))).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// Every measurement answered something and nothing failed.
fn assert_clean(json: &serde_json::Value) {
    for v in json["variants"].as_array().unwrap() {
        assert!(v["error"].is_null(), "{v}");
        for m in v["measurements"].as_array().unwrap() {
            assert!(m["pairs_per_second"].as_f64().unwrap() > 0.0, "{m}");
            assert!(m["errors"].as_object().unwrap().is_empty(), "{m}");
        }
    }
}

#[test]
fn stage_calls_named_variants_a_pairs_file_and_an_http_ramp_run() {
    let dir = std::env::temp_dir().join(format!("ce-bench-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pairs: String = (0..24)
        .map(|i| {
            format!(
                "{{\"query\": \"query {}\", \"passage\": \"passage number {i} about rust\"}}\n",
                i / 12
            )
        })
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
    let short =
        "warmup_s = 0.5\nwindow_s = 1.0\nstable_windows = 2\ntolerance = 0.5\nmax_windows = 3";

    // The model stage alone, pre-tokenized pairs from the file, two named variants.
    let scored = run_experiment(
        &dir,
        "model_stage",
        &format!(
            "name = \"model_stage\"\ndescription = \"\"\n[server]\ntokenizers = 1\n\
             [[variant]]\nlabel = \"one replica\"\nreplicas = 1\n\
             [[variant]]\nlabel = \"two replicas\"\nreplicas = 2\n\
             [client]\ncall = \"score_tokens\"\npairs_file = \"pairs.jsonl\"\n\
             batch_sizes = [6]\nconcurrency = [2]\n{short}\n"
        ),
    );
    assert_clean(&scored);
    let labels: Vec<&str> = scored["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["one replica", "two replicas"]);
    assert_eq!(scored["call"], "score_tokens");
    let md = std::fs::read_to_string(dir.join("out/results/model_stage_results.md")).unwrap();
    assert!(md.contains("ScoreTokens (model stage only"), "{md}");
    // The model stage never tokenized: the server's split says so.
    let m = &scored["variants"][0]["measurements"][0];
    assert!(m["server_inference_ms"].as_f64().unwrap() > 0.0, "{m}");

    // The tokenizer stage alone.
    let tokenized = run_experiment(
        &dir,
        "tokenizer_stage",
        &format!(
            "name = \"tokenizer_stage\"\ndescription = \"\"\n[server]\ntokenizers = 2\ntokenize_chunk = 4\n\
             [client]\ncall = \"tokenize\"\nbatch_sizes = [16]\nconcurrency = [2]\n{short}\n"
        ),
    );
    assert_clean(&tokenized);
    let m = &tokenized["variants"][0]["measurements"][0];
    assert_eq!(m["server_inference_ms"].as_f64(), Some(0.0), "{m}");
    // /metrics agrees: tokenize jobs ran, no batch was forwarded during the level.
    assert!(
        m["server_stages_ms"]["tokenize"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    assert!(m["server_stages_ms"].get("forward").is_none(), "{m}");

    // A ramp over HTTP.
    let ramp = run_experiment(
        &dir,
        "http_ramp",
        "name = \"http_ramp\"\ndescription = \"\"\n[server]\ntokenizers = 1\n\
         [client]\ntransport = \"http\"\nmode = \"ramp\"\nramp = { from = 2.0, to = 8.0, seconds = 3 }\n\
         batch_sizes = [4]\nwarmup_s = 0.5\nwindow_s = 1.0\n",
    );
    assert_clean(&ramp);
    let m = &ramp["variants"][0]["measurements"][0];
    assert_eq!(m["windows"].as_array().unwrap().len(), 3, "{m}");
    assert_eq!(m["ramp"]["to"].as_f64(), Some(8.0), "{m}");
    let offered: Vec<f64> = m["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["offered_per_second"].as_f64().unwrap())
        .collect();
    assert!(offered.windows(2).all(|w| w[1] > w[0]), "{offered:?}");
    for plot in ["http_ramp_ramp.svg", "http_ramp_ramp_latency.svg"] {
        let svg = std::fs::read_to_string(dir.join("out/results").join(plot)).unwrap();
        assert!(svg.contains("offered requests/s"), "{plot}");
    }

    // Stage-only experiments are kept out of the end-to-end ranking.
    let exe = Path::new(env!("CARGO_BIN_EXE_ce-bench"));
    let summary = Command::new(exe)
        .args(["summary", "--out"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(summary.status.success());
    let text = String::from_utf8_lossy(&summary.stdout);
    let stages = text
        .find("## Pipeline stages alone")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(text[..stages].contains("| 1 | http_ramp |"), "{text}");
    assert!(text[stages..].contains("model_stage"), "{text}");
    assert!(text[stages..].contains("tokenizer_stage"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
