//! The engine against the transformers reference (tests/fixtures, written by
//! scripts/golden.py): identical token ids, f32 logits within 1e-4 one by one
//! and in mixed-length batches, and every reduced precision close to f32.

mod support;

use ce_common::TokenBatch;
use model_worker::{Engine, EngineConfig, WeightDType};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use tokenizer_worker::Truncation;

const LOGIT_TOLERANCE: f32 = 1e-4;

fn engine(dtype: WeightDType) -> Engine {
    let mut config = EngineConfig::new(support::model_dir().to_string_lossy());
    config.dtype = dtype;
    Engine::load(&config).expect("default model loads")
}

fn batch_of(pairs: &[&support::GoldenPair]) -> TokenBatch {
    let mut b = TokenBatch::default();
    for p in pairs {
        b.push(&p.input_ids, &p.token_type_ids);
    }
    b
}

#[test]
fn token_ids_match_transformers_for_every_pair() {
    let fixture = support::fixture();
    assert!(fixture.pairs.len() >= 100);
    let engine = engine(WeightDType::F32);
    assert_eq!(engine.tokenizer().max_length(), fixture.max_length);
    for p in &fixture.pairs {
        let (ids, types) = engine
            .tokenizer()
            .encode_pair(&p.query, &p.passage, Truncation::Right)
            .unwrap_or_else(|e| panic!("pair {} ({}): {e}", p.id, p.kind));
        assert_eq!(ids, p.input_ids, "input ids of pair {} ({})", p.id, p.kind);
        assert_eq!(
            types, p.token_type_ids,
            "type ids of pair {} ({})",
            p.id, p.kind
        );
    }
}

#[test]
fn f32_logits_match_one_by_one() {
    let fixture = support::fixture();
    let engine = engine(WeightDType::F32);
    let mut worst = 0f32;
    for p in &fixture.pairs {
        let scores = engine.score(&batch_of(&[p])).unwrap();
        assert_eq!(scores.logits.len(), p.logits.len());
        for (got, want) in scores.logits.iter().zip(&p.logits) {
            let err = (got - want).abs();
            worst = worst.max(err);
            assert!(
                err <= LOGIT_TOLERANCE,
                "pair {} ({}): {got} vs {want}",
                p.id,
                p.kind
            );
        }
    }
    println!("f32 one by one: max |logit error| = {worst:.2e}");
}

#[test]
fn f32_logits_match_in_mixed_length_batches() {
    let fixture = support::fixture();
    let engine = engine(WeightDType::F32);
    let mut pairs: Vec<&support::GoldenPair> = fixture.pairs.iter().collect();
    pairs.shuffle(&mut rand::rngs::StdRng::seed_from_u64(11));
    let mut worst = 0f32;
    let mut rest = &pairs[..];
    for size in [1usize, 7, 32, 200].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at((*size).min(rest.len()));
        rest = tail;
        let scores = engine.score(&batch_of(chunk)).unwrap();
        for (i, p) in chunk.iter().enumerate() {
            let err = (scores.logits[i] - p.logits[0]).abs();
            worst = worst.max(err);
            assert!(
                err <= LOGIT_TOLERANCE,
                "pair {} ({}) in a batch of {}",
                p.id,
                p.kind,
                chunk.len()
            );
        }
    }
    println!("f32 mixed batches: max |logit error| = {worst:.2e}");
}

#[test]
fn padded_layouts_score_the_same_and_cost_more() {
    let fixture = support::fixture();
    let grouped = engine(WeightDType::F32);
    let pairs: Vec<&support::GoldenPair> = fixture.pairs.iter().take(40).collect();
    let batch = batch_of(&pairs);
    let a = grouped.score(&batch).unwrap();
    let longest = (0..batch.len()).map(|i| batch.seq_len(i)).max().unwrap();
    // `single` pads attention only; `padded` pads every layer. Both compute
    // `pairs × longest` attention slots and must not change a score.
    for layout in ["single", "padded"] {
        let mut config = EngineConfig::new(support::model_dir().to_string_lossy());
        config.attention = layout.parse().unwrap();
        let b = Engine::load(&config).unwrap().score(&batch).unwrap();
        for (i, p) in pairs.iter().enumerate() {
            assert!(
                (b.logits[i] - p.logits[0]).abs() <= LOGIT_TOLERANCE,
                "{layout}: pair {}",
                p.id
            );
            assert!(
                (a.logits[i] - b.logits[i]).abs() <= LOGIT_TOLERANCE,
                "{layout}: pair {}",
                p.id
            );
        }
        assert_eq!(b.attention_slots, longest * batch.len(), "{layout}");
        assert!(
            b.attention_slots > a.attention_slots,
            "{layout} {} vs grouped {}",
            b.attention_slots,
            a.attention_slots
        );
    }
    assert!("diagonal".parse::<model_worker::AttentionLayout>().is_err());
}

#[test]
fn forward_is_split_when_over_the_token_budget() {
    let fixture = support::fixture();
    let mut config = EngineConfig::new(support::model_dir().to_string_lossy());
    config.max_forward_tokens = 300;
    let engine = Engine::load(&config).unwrap();
    let pairs: Vec<&support::GoldenPair> = fixture.pairs.iter().take(20).collect();
    let scores = engine.score(&batch_of(&pairs)).unwrap();
    for (got, p) in scores.first_logits().iter().zip(&pairs) {
        assert!((got - p.logits[0]).abs() <= LOGIT_TOLERANCE);
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn reduced_precisions_stay_close_to_f32() {
    let fixture = support::fixture();
    // Every edge case plus a spread of ordinary pairs keeps this quick.
    let pairs: Vec<&support::GoldenPair> = fixture
        .pairs
        .iter()
        .filter(|p| p.kind != "text" || p.id % 6 == 0)
        .collect();
    let batch = batch_of(&pairs);
    let reference = engine(WeightDType::F32).score_with_pooled(&batch).unwrap();
    let hidden = reference.pooled.len() / pairs.len();
    for (dtype, floor) in [
        (WeightDType::F16, 0.99),
        (WeightDType::Bf16, 0.99),
        (WeightDType::Q8_0, 0.99),
        (WeightDType::Q4_0, 0.97),
        (WeightDType::I8, 0.99),
    ] {
        let scores = engine(dtype).score_with_pooled(&batch).unwrap();
        let cosines: Vec<f64> = (0..pairs.len())
            .map(|i| {
                let r = i * hidden..(i + 1) * hidden;
                cosine(&scores.pooled[r.clone()], &reference.pooled[r])
            })
            .collect();
        let min = cosines.iter().cloned().fold(f64::INFINITY, f64::min);
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        let max_logit_err = scores
            .logits
            .iter()
            .zip(&reference.logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!(
            "{dtype}: pooled [CLS] cosine vs f32 over {} pairs: min {min:.5}, mean {mean:.5}; max |logit - f32| {max_logit_err:.4}",
            pairs.len()
        );
        assert!(min >= floor, "{dtype}: min cosine {min} below {floor}");
        if dtype == WeightDType::Bf16 {
            // The CPU encoder's bf16 products (AMX, AVX512-BF16 or the f32
            // fallback, whichever this CPU runs) sum in f32.
            assert!(
                max_logit_err <= 2e-3,
                "bf16: max |logit - f32| {max_logit_err}"
            );
        }
    }
}

/// Largest and mean |a − b|.
fn abs_errors(a: &[f32], b: &[f32]) -> (f32, f32) {
    let errors: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let max = errors.iter().cloned().fold(0f32, f32::max);
    (max, errors.iter().sum::<f32>() / errors.len() as f32)
}

#[test]
fn int8_smoothing_brings_logits_closer_to_f32() {
    use model_worker::encoder::{CrossEncoder, LoadOptions, cpu::calibration};
    use model_worker::{ModelConfig, ModelFiles};
    // The same int8 encoder with and without the calibrated smoothing, on
    // every golden pair: the default model's residual stream has channels
    // ten times the others, which per-row scales alone cannot absorb.
    let fixture = support::fixture();
    let pairs: Vec<&support::GoldenPair> = fixture.pairs.iter().collect();
    let batch = batch_of(&pairs);
    let reference = engine(WeightDType::F32);
    let want = reference.score(&batch).unwrap().logits;
    let files = ModelFiles::resolve(&support::model_dir().to_string_lossy()).unwrap();
    let config = ModelConfig::from_file(&files.config).unwrap();
    let text = calibration::text_batch(reference.tokenizer(), usize::MAX).unwrap();
    let errors = |calibration: Option<TokenBatch>| {
        let model = CrossEncoder::load(
            &files.weights,
            config.clone(),
            WeightDType::I8,
            &candle_core::Device::Cpu,
            EngineConfig::new("").attention,
            LoadOptions {
                calibration,
                ..LoadOptions::default()
            },
        )
        .unwrap();
        assert!(model.runs_cpu_kernels());
        let smoothed = model.int8_smoothed();
        (
            abs_errors(&model.forward(&batch).unwrap().logits, &want),
            smoothed,
        )
    };
    let ((plain_max, plain_mean), plain_smoothed) = errors(None);
    let ((smoothed_max, smoothed_mean), smoothed) = errors(Some(text));
    assert!(!plain_smoothed && smoothed);
    // Calibration text the model cannot read (a token id past its
    // vocabulary) loads it unsmoothed, not at all: the same scores as
    // without calibration.
    let mut unreadable = TokenBatch::default();
    unreadable.push(&[101, u32::MAX - 1, 102], &[0, 0, 0]);
    let (fallback, fallback_smoothed) = errors(Some(unreadable));
    assert!(!fallback_smoothed);
    assert_eq!(fallback, (plain_max, plain_mean));
    println!(
        "i8 vs f32 over {} pairs: unsmoothed max {plain_max:.2e} mean {plain_mean:.2e}; smoothed max {smoothed_max:.2e} mean {smoothed_mean:.2e}",
        pairs.len()
    );
    assert!(
        smoothed_mean < 0.8 * plain_mean,
        "smoothing: mean |Δ| {smoothed_mean} vs {plain_mean} unsmoothed"
    );
    assert!(smoothed_max <= 4e-3, "smoothed: max |Δ| {smoothed_max}");
}
