//! Every model family against transformers (tests/fixtures/families, written
//! by scripts/family_fixtures.py from random-weight models): the tokenizer's
//! ids identical, f32 logits within 1e-4 on the CPU encoder and on candle,
//! one by one and in a shuffled mixed-length batch, with the query
//! tokenized once; and i8's fidelity (Kendall's τ, max |Δ|) on each.

use std::path::PathBuf;

use ce_common::TokenBatch;
use ce_model_spec::{Family, ModelConfig};
use model_worker::fidelity::{kendall_tau, max_abs_diff};
use model_worker::{AttentionLayout, Engine, EngineConfig, WeightDType};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Deserialize;
use tokenizer_worker::Truncation;

const LOGIT_TOLERANCE: f32 = 1e-4;

#[derive(Debug, Deserialize)]
struct Fixture {
    model_type: String,
    max_length: usize,
    pairs: Vec<Pair>,
}

#[derive(Debug, Deserialize)]
struct Pair {
    id: usize,
    kind: String,
    query: String,
    passage: String,
    input_ids: Vec<u32>,
    logits: Vec<f32>,
    /// A request's own instruction (LLM rerankers' pairs only).
    #[serde(default)]
    instruction: Option<String>,
}

/// Each fixture and the family its `model_type` must map to.
const FIXTURES: &[(&str, Family)] = &[
    ("roberta", Family::Roberta),
    ("xlm-roberta", Family::Roberta),
    ("electra", Family::Electra),
    ("distilbert", Family::DistilBert),
    ("modernbert", Family::ModernBert),
    ("modernbert-mean", Family::ModernBert),
    ("qwen3-reranker", Family::Qwen3),
    ("qwen3-seq-cls", Family::Qwen3),
];

/// A pair's ids and segments as the tokenizer worker makes them (the
/// query, with the pair's instruction if it has one, tokenized once).
fn encode(engine: &Engine, p: &Pair) -> (Vec<u32>, Vec<u32>) {
    let t = engine.tokenizer();
    match &p.instruction {
        None => t.encode_pair(&p.query, &p.passage, Truncation::Right),
        Some(instruction) => t
            .encode_query_ids_for(&p.query, Some(instruction), Truncation::Right)
            .and_then(|q| t.encode_with_query(&q, &p.passage, Truncation::Right)),
    }
    .unwrap_or_else(|e| panic!("pair {} ({}): {e}", p.id, p.kind))
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/families")
        .join(name)
}

fn fixture(name: &str) -> Fixture {
    let path = dir(name).join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture parses")
}

fn engine(name: &str, dtype: WeightDType, attention: AttentionLayout) -> Engine {
    let mut config = EngineConfig::new(dir(name).to_string_lossy());
    config.max_length = fixture(name).max_length;
    config.dtype = dtype;
    config.attention = attention;
    Engine::load(&config).unwrap_or_else(|e| panic!("{name} ({dtype}, {attention}) loads: {e}"))
}

/// The pairs as the tokenizer worker would send them: our own tokenizer's
/// ids, with the segments it gives.
fn batch_of(engine: &Engine, pairs: &[&Pair]) -> TokenBatch {
    let mut b = TokenBatch::default();
    for p in pairs {
        let (ids, types) = encode(engine, p);
        b.push(&ids, &types);
    }
    b
}

/// Each pair's logit of the model's relevant label, from a batch's logits.
fn relevant_scores(engine: &Engine, logits: &[f32], pairs: usize) -> Vec<f32> {
    let relevant = engine.config().relevant_label;
    logits
        .chunks(logits.len() / pairs)
        .map(|row| row[relevant])
        .collect()
}

fn check_logits(name: &str, what: &str, got: &[f32], pairs: &[&Pair]) -> f32 {
    let labels = pairs[0].logits.len();
    assert_eq!(got.len(), pairs.len() * labels, "{name} {what}");
    let mut worst = 0f32;
    for (row, p) in got.chunks(labels).zip(pairs) {
        for (g, w) in row.iter().zip(&p.logits) {
            let err = (g - w).abs();
            worst = worst.max(err);
            assert!(
                err <= LOGIT_TOLERANCE,
                "{name} {what}: pair {} ({}) logit {g} vs transformers {w}",
                p.id,
                p.kind
            );
        }
    }
    worst
}

#[test]
fn every_family_parses_to_its_own_layout() {
    for &(name, family) in FIXTURES {
        let config = ModelConfig::from_file(&dir(name).join("config.json")).unwrap();
        assert_eq!(config.family, family, "{name}");
        assert_eq!(config.model_type, fixture(name).model_type, "{name}");
    }
    let xlmr = ModelConfig::from_file(&dir("xlm-roberta").join("config.json")).unwrap();
    assert_eq!(
        xlmr.relevant_label, 1,
        "id2label names label 1 \"relevant\""
    );
    // RoBERTa's positions start after its padding id: 42 rows hold 40 tokens.
    let roberta = ModelConfig::from_file(&dir("roberta").join("config.json")).unwrap();
    assert_eq!(roberta.max_sequence_len(), 40);
    let mean = ModelConfig::from_file(&dir("modernbert-mean").join("config.json")).unwrap();
    assert_eq!(mean.head.pooling, ce_model_spec::Pooling::Mean);
}

#[test]
fn token_ids_match_transformers_for_every_family() {
    for &(name, _) in FIXTURES {
        let fixture = fixture(name);
        let engine = engine(name, WeightDType::F32, AttentionLayout::Grouped);
        assert_eq!(
            engine.tokenizer().max_length(),
            fixture.max_length,
            "{name}"
        );
        let mut truncated = 0;
        for p in &fixture.pairs {
            let (ids, _) = encode(&engine, p);
            assert_eq!(
                ids, p.input_ids,
                "{name}: ids of pair {} ({})",
                p.id, p.kind
            );
            truncated += usize::from(ids.len() == fixture.max_length);
        }
        assert!(truncated >= 2, "{name}: truncation is exercised");
    }
}

#[test]
fn f32_logits_match_transformers_on_the_cpu_encoder_and_on_candle() {
    for &(name, _) in FIXTURES {
        let fixture = fixture(name);
        let pairs: Vec<&Pair> = fixture.pairs.iter().collect();
        let cpu = engine(name, WeightDType::F32, AttentionLayout::Grouped);
        assert!(cpu.runs_cpu_kernels(), "{name}: the CPU encoder serves f32");
        let mut worst = 0f32;
        for p in &pairs {
            let one = cpu.score(&batch_of(&cpu, &[p])).unwrap();
            worst = worst.max(check_logits(name, "cpu, one pair", &one.logits, &[p]));
        }
        // A shuffled batch of every length: shards, packing and per-pair
        // positions must not leak between pairs.
        let mut shuffled = pairs.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
        let batch = cpu.score(&batch_of(&cpu, &shuffled)).unwrap();
        worst = worst.max(check_logits(name, "cpu, batch", &batch.logits, &shuffled));
        // The query tokenized once, as the server does it.
        let query = &pairs[0].query;
        let same_query: Vec<&Pair> = pairs
            .iter()
            .copied()
            .filter(|p| &p.query == query && p.instruction.is_none())
            .collect();
        let passages: Vec<&str> = same_query.iter().map(|p| p.passage.as_str()).collect();
        let scored = cpu
            .score_query(query, &passages, Truncation::Right)
            .unwrap();
        check_logits(name, "cpu, query once", &scored.logits, &same_query);
        for layout in [AttentionLayout::Single, AttentionLayout::Padded] {
            let candle = engine(name, WeightDType::F32, layout);
            assert!(
                !candle.runs_cpu_kernels(),
                "{name}: {layout} runs on candle"
            );
            let scores = candle.score(&batch_of(&candle, &shuffled)).unwrap();
            let err = check_logits(name, &format!("candle {layout}"), &scores.logits, &shuffled);
            worst = worst.max(err);
        }
        println!(
            "{name}: f32 max |logit - transformers| {worst:.2e} over {} pairs",
            pairs.len()
        );
    }
}

#[test]
fn reduced_precisions_keep_each_familys_ranking() {
    // bf16 sums in f32 and rounds each operand once: it must rank almost as
    // f32 does; i8 rounds far more coarsely on these random weights.
    for (dtype, floor) in [(WeightDType::Bf16, 0.95), (WeightDType::I8, 0.8)] {
        for &(name, _) in FIXTURES {
            let fixture = fixture(name);
            let pairs: Vec<&Pair> = fixture.pairs.iter().collect();
            let f32_engine = engine(name, WeightDType::F32, AttentionLayout::Grouped);
            let reduced = engine(name, dtype, AttentionLayout::Grouped);
            assert!(
                reduced.runs_cpu_kernels(),
                "{name}: {dtype} off the CPU encoder"
            );
            let batch = batch_of(&f32_engine, &pairs);
            let column = |logits: &[f32]| relevant_scores(&f32_engine, logits, pairs.len());
            let reference = column(&f32_engine.score(&batch).unwrap().logits);
            let scores = column(&reduced.score(&batch).unwrap().logits);
            let tau = kendall_tau(&reference, &scores).unwrap();
            let delta = max_abs_diff(&reference, &scores);
            println!(
                "{name}: {dtype} vs f32 over {} pairs: Kendall tau {tau:.3}, max |delta| {delta:.4}",
                pairs.len()
            );
            assert!(tau >= floor, "{name}: {dtype} ranks unlike f32 (tau {tau})");
        }
    }
}

#[test]
fn ce_score_scores_every_family_from_the_command_line() {
    use std::io::Write;
    for &(name, _) in FIXTURES {
        let fixture = fixture(name);
        let relevant = ModelConfig::from_file(&dir(name).join("config.json"))
            .unwrap()
            .relevant_label;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ce-score"))
            .args(["--model", &dir(name).to_string_lossy(), "--raw"])
            .args(["--max-length", &fixture.max_length.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for p in &fixture.pairs {
            let mut line = serde_json::json!({"query": p.query, "passage": p.passage});
            if let Some(instruction) = &p.instruction {
                line["instruction"] = instruction.as_str().into();
            }
            writeln!(stdin, "{line}").unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: ce-score failed");
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), fixture.pairs.len(), "{name}");
        for (line, p) in lines.iter().zip(&fixture.pairs) {
            let got = line["score"].as_f64().unwrap() as f32;
            let want = p.logits[relevant];
            assert!(
                (got - want).abs() <= LOGIT_TOLERANCE,
                "{name}: pair {}: {got} vs {want}",
                p.id
            );
        }
    }
}

/// Prefix reuse changes no logit: a batch of many documents under a few
/// queries (each query's prompt shared by its documents, two requests'
/// documents interleaved) scores the same with the shared prefixes
/// computed once as with every sequence computed whole, on f32, bf16 and
/// i8 — and it computes far fewer tokens.
#[test]
fn prefix_reuse_changes_no_logit() {
    for name in ["qwen3-reranker", "qwen3-seq-cls"] {
        for dtype in [WeightDType::F32, WeightDType::Bf16, WeightDType::I8] {
            let load = |reuse: bool| {
                let mut config = EngineConfig::new(dir(name).to_string_lossy());
                config.max_length = fixture(name).max_length;
                config.dtype = dtype;
                config.prefix_reuse = reuse;
                Engine::load(&config).unwrap()
            };
            let (reused, whole) = (load(true), load(false));
            let fixture = fixture(name);
            let passages: Vec<&str> = fixture.pairs.iter().map(|p| p.passage.as_str()).collect();
            let t = reused.tokenizer();
            let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = Vec::new();
            for (query, instruction) in [
                ("what is a reranker", None),
                ("capital of japan", Some("Find the city")),
            ] {
                let ids = t
                    .encode_query_ids_for(query, instruction, Truncation::Right)
                    .unwrap();
                for passage in &passages {
                    pairs.push(
                        t.encode_with_query(&ids, passage, Truncation::Right)
                            .unwrap(),
                    );
                }
            }
            pairs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(3));
            let mut batch = TokenBatch::default();
            for (ids, types) in &pairs {
                batch.push(ids, types);
            }
            let (a, b) = (reused.score(&batch).unwrap(), whole.score(&batch).unwrap());
            let delta = max_abs_diff(&a.logits, &b.logits);
            println!(
                "{name} {dtype}: prefix reuse computed {} of {} tokens, max |logit delta| {delta:.1e}",
                a.attention_slots, b.attention_slots
            );
            // The same products on fewer rows: f32 agrees to rounding; the
            // reduced precisions round each row's activations alike.
            assert!(delta <= 2e-5, "{name} {dtype}: {delta}");
            // Each query's prompt is ~90 of ~160 tokens a pair: computed
            // once per shard instead of once per pair.
            assert!(
                a.attention_slots * 10 < b.attention_slots * 6,
                "{name} {dtype}: the shared prefixes were computed once a shard"
            );
        }
    }
}

/// A sharded checkpoint (`model.safetensors.index.json` naming its shards,
/// as Qwen3-Reranker-4B and -8B ship) loads and scores as the single file.
#[test]
fn a_sharded_checkpoint_scores_as_the_single_file() {
    let name = "qwen3-seq-cls";
    let source = dir(name);
    let sharded = tempfile::tempdir().unwrap();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(source.join(file), sharded.path().join(file)).unwrap();
    }
    let tensors =
        candle_core::safetensors::load(source.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let shard: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|&n| (n.clone(), tensors[n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, sharded.path().join(&file)).unwrap();
        for &n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        sharded.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let fixture = fixture(name);
    let pairs: Vec<&Pair> = fixture.pairs.iter().collect();
    let mut config = EngineConfig::new(sharded.path().to_string_lossy());
    config.max_length = fixture.max_length;
    let engine = Engine::load(&config).expect("the sharded checkpoint loads");
    let scores = engine.score(&batch_of(&engine, &pairs)).unwrap();
    check_logits(name, "sharded", &scores.logits, &pairs);
}

/// Int8 smoothing on the decoder: a Qwen3 whose normed residual stream has
/// a few channels far larger than the rest (here made so by scaling those
/// channels of every input and post-attention RMSNorm weight by 25, the
/// systematic outlier channels SmoothQuant was made for) ranks closer to
/// f32 when calibrated, on the yes/no reranker and the classifier. The
/// random fixtures themselves have no such channels, so calibration leaves
/// them unsmoothed (`int8::has_outlier_channels`).
#[test]
fn decoder_int8_smoothing_absorbs_outlier_channels() {
    use model_worker::encoder::{CrossEncoder, LoadOptions, cpu::calibration};
    use model_worker::{ModelConfig, ModelFiles};
    const OUTLIERS: [usize; 3] = [3, 17, 40];
    for name in ["qwen3-reranker", "qwen3-seq-cls"] {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(dir(name)).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        let weights = copy.path().join("model.safetensors");
        let mut tensors =
            candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
        let mut scaled = 0;
        for (key, tensor) in tensors.iter_mut() {
            if key.ends_with("input_layernorm.weight")
                || key.ends_with("post_attention_layernorm.weight")
            {
                let mut gamma: Vec<f32> = tensor.to_vec1().unwrap();
                for &k in &OUTLIERS {
                    gamma[k] *= 25.0;
                }
                *tensor = candle_core::Tensor::new(gamma, &candle_core::Device::Cpu).unwrap();
                scaled += 1;
            }
        }
        assert_eq!(scaled, 6, "{name}: two norms in each of three layers");
        candle_core::safetensors::save(&tensors, &weights).unwrap();

        let fixture = fixture(name);
        let mut f32_config = EngineConfig::new(copy.path().to_string_lossy());
        f32_config.max_length = fixture.max_length;
        let reference = Engine::load(&f32_config).unwrap();
        let pairs: Vec<&Pair> = fixture.pairs.iter().collect();
        let batch = batch_of(&reference, &pairs);
        let column = |logits: &[f32]| relevant_scores(&reference, logits, pairs.len());
        let want = column(&reference.score(&batch).unwrap().logits);
        let tokenizer = reference.tokenizer();
        let yes_no_tokens = match pairs[0].logits.len() {
            2 => Some(["no", "yes"].map(|t| tokenizer.token_id(t).unwrap())),
            _ => None,
        };
        let files = ModelFiles::resolve(&copy.path().to_string_lossy()).unwrap();
        let config = ModelConfig::from_file(&files.config).unwrap();
        let text = calibration::text_batch(tokenizer, calibration::DECODER_TOKENS).unwrap();
        assert!(text.len() >= 2 && text.total_tokens() <= calibration::DECODER_TOKENS);
        let int8 = |calibration: Option<TokenBatch>| {
            let model = CrossEncoder::load(
                &files.weights,
                config.clone(),
                WeightDType::I8,
                &candle_core::Device::Cpu,
                AttentionLayout::Grouped,
                LoadOptions {
                    yes_no_tokens,
                    calibration,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            assert!(model.runs_cpu_kernels(), "{name}");
            let scores = column(&model.forward(&batch).unwrap().logits);
            (model.int8_smoothed(), scores)
        };
        let (plain_smoothed, plain) = int8(None);
        let (smoothed, scores) = int8(Some(text));
        assert!(!plain_smoothed && smoothed, "{name}");
        // The engine calibrates every i8 load: this model it smooths, the
        // fixture as it is (no outlier channels) it leaves as it is.
        let mut i8_config = f32_config.clone();
        i8_config.dtype = WeightDType::I8;
        let kernel = Engine::load(&i8_config).unwrap().kernel();
        assert!(
            kernel.contains("i8 on") && kernel.contains("smoothed"),
            "{name}: {kernel}"
        );
        let kernel = engine(name, WeightDType::I8, AttentionLayout::Grouped).kernel();
        assert!(!kernel.contains("smoothed"), "{name}: {kernel}");
        // Text the model cannot read (an id past its vocabulary) loads it
        // unsmoothed, with the same scores as no calibration at all.
        let mut unreadable = TokenBatch::default();
        unreadable.push(&[1, u32::MAX - 1, 2], &[0, 0, 0]);
        assert_eq!(int8(Some(unreadable)), (false, plain.clone()), "{name}");
        let mean_error = |got: &[f32]| -> f32 {
            got.iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .sum::<f32>()
                / want.len() as f32
        };
        let (plain_error, smoothed_error) = (mean_error(&plain), mean_error(&scores));
        let (plain_tau, smoothed_tau) = (
            kendall_tau(&want, &plain).unwrap(),
            kendall_tau(&want, &scores).unwrap(),
        );
        println!(
            "{name} with outlier channels, i8 vs f32 over {} pairs: unsmoothed mean |delta| {plain_error:.4}, tau {plain_tau:.3}; smoothed {smoothed_error:.4}, tau {smoothed_tau:.3}",
            want.len()
        );
        // Measured: mean |Δ| 0.315 → 0.261 and τ 0.852 → 0.920 (yes/no),
        // 0.078 → 0.030 and 0.932 → 0.972 (classifier).
        assert!(
            smoothed_error < 0.9 * plain_error,
            "{name}: smoothing left mean |delta| {smoothed_error} of {plain_error}"
        );
        assert!(
            smoothed_tau >= plain_tau + 0.03,
            "{name}: tau {smoothed_tau} against {plain_tau} unsmoothed"
        );
    }
}

/// A decoder calibrates on the first calibration pairs that fit its token
/// budget (prompts included), and on one however long it is.
#[test]
fn calibration_text_takes_the_first_pairs_that_fit() {
    use model_worker::encoder::cpu::calibration;
    let engine = engine("qwen3-reranker", WeightDType::F32, AttentionLayout::Grouped);
    let tokenizer = engine.tokenizer();
    let all = calibration::text_batch(tokenizer, usize::MAX).unwrap();
    assert!(all.len() >= 16, "{} pairs", all.len());
    let two = all.seq_len(0) + all.seq_len(1);
    for (budget, pairs) in [(1, 1), (two - 1, 1), (two, 2), (usize::MAX, all.len())] {
        let batch = calibration::text_batch(tokenizer, budget).unwrap();
        assert_eq!(batch.len(), pairs, "budget {budget}");
        for i in 0..pairs {
            assert_eq!(batch.ids(i), all.ids(i), "budget {budget}, pair {i}");
        }
    }
    let budgeted = calibration::text_batch(tokenizer, calibration::DECODER_TOKENS).unwrap();
    assert!(budgeted.len() >= 2 && budgeted.total_tokens() <= calibration::DECODER_TOKENS);
}
