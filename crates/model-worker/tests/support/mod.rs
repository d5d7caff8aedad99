//! Shared helpers: the default model and the golden fixture.

#![allow(dead_code)]

use std::path::PathBuf;

use serde::Deserialize;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model directory; the tests fail (not skip) without it.
pub fn model_dir() -> PathBuf {
    let dir = std::env::var_os("CE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("models/minilm-l6-ce"));
    assert!(
        dir.join("model.safetensors").is_file(),
        "default model missing at {}: run scripts/fetch_model.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

#[derive(Debug, Deserialize)]
pub struct Fixture {
    pub max_length: usize,
    pub pairs: Vec<GoldenPair>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenPair {
    pub id: usize,
    pub kind: String,
    pub query: String,
    pub passage: String,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub logits: Vec<f32>,
}

pub fn fixture() -> Fixture {
    let path = workspace_root().join("tests/fixtures/golden_minilm_l6_ce.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture parses")
}
