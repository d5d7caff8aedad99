//! Bad inputs give typed errors, never a panic.

mod support;

use ce_common::{BatchError, TokenBatch};
use model_worker::{Engine, EngineConfig, EngineError, SpecError, WeightDType};
use tokenizer_worker::{TokenizeError, Truncation};

fn engine() -> Engine {
    Engine::load(&EngineConfig::new(support::model_dir().to_string_lossy())).unwrap()
}

#[test]
fn empty_and_whitespace_queries_are_rejected() {
    let engine = engine();
    for query in ["", "   ", "\t\r\n", "\u{a0}\u{2003}"] {
        let e = engine
            .score_query(query, &["a passage"], Truncation::Right)
            .unwrap_err();
        assert!(
            matches!(e, EngineError::Tokenize(TokenizeError::EmptyQuery)),
            "{query:?}: {e}"
        );
    }
}

#[test]
fn empty_passage_is_scored() {
    let scores = engine()
        .score_query("a query", &["", "   "], Truncation::Right)
        .unwrap();
    assert_eq!(scores.logits.len(), 2);
    assert!(scores.logits.iter().all(|x| x.is_finite()));
}

#[test]
fn no_truncation_reports_the_token_count() {
    let long = "word ".repeat(600);
    let e = engine()
        .score_query("q", &[long.as_str()], Truncation::Off)
        .unwrap_err();
    match e {
        EngineError::Tokenize(TokenizeError::TooLong { tokens, limit }) => {
            assert_eq!(limit, 512);
            assert!(tokens > 600, "{tokens}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn left_truncation_keeps_the_end() {
    let engine = engine();
    let long = format!("{} final words here", "start ".repeat(600));
    let right = engine
        .tokenizer()
        .encode_pair("q", &long, Truncation::Right)
        .unwrap()
        .0;
    let left = engine
        .tokenizer()
        .encode_pair("q", &long, Truncation::Left)
        .unwrap()
        .0;
    assert_eq!(right.len(), 512);
    assert_eq!(left.len(), 512);
    assert_ne!(right, left);
    let end = engine
        .tokenizer()
        .encode_pair("q", "final words here", Truncation::Right)
        .unwrap()
        .0;
    // [.., final, words, here, SEP] ends both.
    assert_eq!(left[left.len() - 4..], end[end.len() - 4..]);
}

#[test]
fn malformed_batches_are_typed_errors() {
    let engine = engine();
    assert!(matches!(
        engine.score(&TokenBatch::default()),
        Err(EngineError::Batch(BatchError::Empty))
    ));
    let mut b = TokenBatch::default();
    b.push(&[101, 99_999, 102], &[0, 0, 0]);
    assert!(matches!(
        engine.score(&b),
        Err(EngineError::Batch(BatchError::TokenOutOfVocab { .. }))
    ));
    let mut b = TokenBatch::default();
    b.push(&vec![101; 513], &vec![0; 513]);
    assert!(matches!(
        engine.score(&b),
        Err(EngineError::Batch(BatchError::SequenceTooLong { .. }))
    ));
    let mut b = TokenBatch::default();
    b.push(&[101, 102], &[0, 5]);
    assert!(matches!(
        engine.score(&b),
        Err(EngineError::Batch(BatchError::TypeOutOfRange { .. }))
    ));
    let b = TokenBatch {
        input_ids: vec![101, 102],
        type_ids: vec![0, 0],
        offsets: vec![0, 3],
    };
    assert!(matches!(
        engine.score(&b),
        Err(EngineError::Batch(BatchError::Offsets(_)))
    ));
}

fn copy_model(dir: &std::path::Path) {
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(support::model_dir().join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn broken_model_directories_are_typed_errors() {
    let load = |model: &str| Engine::load(&EngineConfig::new(model)).unwrap_err();

    assert!(matches!(
        load("/definitely/not/a/model"),
        EngineError::Spec(SpecError::ModelDirMissing(_))
    ));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_string_lossy().to_string();
    assert!(matches!(
        load(&path),
        EngineError::Spec(SpecError::FileMissing { .. })
    ));

    // Wrong model type, named in the message.
    std::fs::write(dir.path().join("config.json"), r#"{"model_type": "t5"}"#).unwrap();
    std::os::unix::fs::symlink(
        support::model_dir().join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        support::model_dir().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = load(&path);
    assert!(
        matches!(e, EngineError::Spec(SpecError::UnsupportedModelType { ref model_type, ref supported }) if model_type == "t5" && supported.contains("xlm-roberta")),
        "{e}"
    );

    // Config not JSON.
    std::fs::write(dir.path().join("config.json"), "not json").unwrap();
    assert!(matches!(
        load(&path),
        EngineError::Spec(SpecError::Config { .. })
    ));

    // Config shape disagrees with the weights.
    let config = std::fs::read_to_string(support::model_dir().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    let e = load(&path);
    assert!(
        matches!(e, EngineError::Spec(SpecError::WeightsMismatch { ref message, .. }) if message.contains("intermediate.dense.weight")),
        "{e}"
    );

    // Weights that are not safetensors.
    let dir2 = tempfile::tempdir().unwrap();
    copy_model(dir2.path());
    std::fs::remove_file(dir2.path().join("model.safetensors")).unwrap();
    std::fs::write(dir2.path().join("model.safetensors"), b"garbage").unwrap();
    let e = load(&dir2.path().to_string_lossy());
    assert!(
        matches!(e, EngineError::Spec(SpecError::WeightsMismatch { .. })),
        "{e}"
    );

    // Tokenizer that is not a tokenizer.
    let dir3 = tempfile::tempdir().unwrap();
    copy_model(dir3.path());
    std::fs::remove_file(dir3.path().join("tokenizer.json")).unwrap();
    std::fs::write(dir3.path().join("tokenizer.json"), b"{}").unwrap();
    let e = load(&dir3.path().to_string_lossy());
    assert!(
        matches!(e, EngineError::Tokenize(TokenizeError::Load { .. })),
        "{e}"
    );

    // Unknown dtype and device strings.
    assert!("q3".parse::<WeightDType>().is_err());
    assert!("gpu".parse::<model_worker::DeviceSpec>().is_err());
}
