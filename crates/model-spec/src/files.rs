//! Where a model comes from: a local directory or a hub id.

use std::path::{Path, PathBuf};

use crate::error::{Result, SpecError};

/// The files of a cross-encoder, resolved to local paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    /// The directory (or hub snapshot) they came from, for display.
    pub origin: String,
    /// `config.json`.
    pub config: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// The weights.
    pub weights: Weights,
}

/// The weight file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Weights {
    /// `model.safetensors`, or the shards `model.safetensors.index.json`
    /// names (larger checkpoints, e.g. Qwen3-Reranker-4B and -8B), each
    /// memory-mapped.
    Safetensors(Vec<PathBuf>),
    /// `pytorch_model.bin` (a PyTorch pickle; read fully).
    Pytorch(PathBuf),
}

impl ModelFiles {
    /// Resolves `spec`: an existing directory is used as is; anything that
    /// looks like `owner/name` and is not a directory is a hub id.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if looks_like_hub_id(spec) {
            return Self::from_hub(spec);
        }
        Err(SpecError::ModelDirMissing(path.to_path_buf()))
    }

    /// The files of a local model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(SpecError::ModelDirMissing(dir.to_path_buf()));
        }
        let need = |file: &str| {
            let p = dir.join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(SpecError::FileMissing {
                    dir: dir.to_path_buf(),
                    file: file.to_string(),
                })
            }
        };
        let config = need("config.json")?;
        let tokenizer = need("tokenizer.json")?;
        let weights = match need("model.safetensors") {
            Ok(p) => Weights::Safetensors(vec![p]),
            Err(e) => match need(SHARD_INDEX) {
                Ok(index) => Weights::Safetensors(
                    shard_names(&index)?
                        .iter()
                        .map(|shard| need(shard))
                        .collect::<Result<_>>()?,
                ),
                Err(_) => match need("pytorch_model.bin") {
                    Ok(p) => Weights::Pytorch(p),
                    Err(_) => return Err(e),
                },
            },
        };
        Ok(Self {
            origin: dir.display().to_string(),
            config,
            tokenizer,
            weights,
        })
    }

    #[cfg(feature = "hub")]
    fn from_hub(id: &str) -> Result<Self> {
        let hub_err = |reason: String| SpecError::Hub {
            id: id.to_string(),
            reason,
        };
        let api = hf_hub::api::sync::Api::new().map_err(|e| hub_err(e.to_string()))?;
        let repo = api.model(id.to_string());
        let get = |file: &str| {
            repo.get(file).map_err(|e| {
                hub_err(format!(
                    "{file}: {e} (offline? download the model elsewhere and pass its directory)"
                ))
            })
        };
        let config = get("config.json")?;
        let tokenizer = get("tokenizer.json")?;
        let weights = match get("model.safetensors") {
            Ok(p) => Weights::Safetensors(vec![p]),
            Err(first) => match get(SHARD_INDEX) {
                Ok(index) => Weights::Safetensors(
                    shard_names(&index)?
                        .iter()
                        .map(|shard| get(shard))
                        .collect::<Result<_>>()?,
                ),
                Err(_) => match get("pytorch_model.bin") {
                    Ok(p) => Weights::Pytorch(p),
                    Err(_) => return Err(first),
                },
            },
        };
        Ok(Self {
            origin: id.to_string(),
            config,
            tokenizer,
            weights,
        })
    }

    #[cfg(not(feature = "hub"))]
    fn from_hub(id: &str) -> Result<Self> {
        Err(SpecError::Hub {
            id: id.to_string(),
            reason: "this binary was built without the `hub` feature; pass a model directory"
                .into(),
        })
    }
}

/// The index of a sharded safetensors checkpoint.
const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The shard files a `model.safetensors.index.json` names (its
/// `weight_map`'s values, each once, in order), refusing any name that is
/// not a plain file name: an index must not point outside its directory.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let bad = |message: String| SpecError::Config {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|source| SpecError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
        let plain = !file.is_empty()
            && !file.starts_with('.')
            && !file.contains(['/', '\\'])
            && file.ends_with(".safetensors");
        if !plain {
            return Err(bad(format!(
                "shard {file:?} is not a .safetensors file of this directory"
            )));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(bad("the weight_map names no shard".into()));
    }
    Ok(names)
}

/// `owner/name` with no other slash and no leading dot or slash.
fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(owner), Some(name), None)
            if !owner.is_empty() && !name.is_empty() && !owner.starts_with('.')
    )
}

/// The largest safetensors header read (the format's own limit is 100 MB).
const MAX_SAFETENSORS_HEADER: u64 = 100 << 20;

impl Weights {
    /// Checks the weight file against `config` before anything is loaded:
    /// for safetensors, the header's word-embedding and feed-forward shapes
    /// and the number of layers, and that every tensor lies inside the
    /// file. Reads only the header. A PyTorch pickle is checked as it is
    /// loaded (by shape, tensor by tensor).
    pub fn check_shapes(&self, config: &crate::ModelConfig) -> Result<()> {
        let Weights::Safetensors(paths) = self else {
            return Ok(());
        };
        let mut shapes = std::collections::BTreeMap::new();
        for path in paths {
            shapes.extend(header_shapes(path)?);
        }
        let Some(path) = paths.first() else {
            return Err(SpecError::WeightsMismatch {
                path: PathBuf::new(),
                message: "no weight file".into(),
            });
        };
        let mismatch = |message: String| SpecError::WeightsMismatch {
            path: path.clone(),
            message,
        };
        let names = crate::TensorNames::find(config.family, |n| shapes.contains_key(n));
        let (h, last) = (config.hidden_size as u64, config.num_hidden_layers - 1);
        let ffn_in = match config.modern {
            Some(_) => 2 * config.intermediate_size as u64,
            None => config.intermediate_size as u64,
        };
        let attention = match (&config.modern, &config.decoder) {
            (Some(_), _) => (crate::Tensor::Qkv(last), vec![3 * h, h]),
            (None, Some(_)) => (
                crate::Tensor::Query(last),
                vec![(config.num_attention_heads * config.head_dim()) as u64, h],
            ),
            (None, None) => (crate::Tensor::Query(last), vec![h, h]),
        };
        let expect = [
            (
                crate::Tensor::WordEmbeddings,
                vec![config.vocab_size as u64, config.embedding_size as u64],
            ),
            (crate::Tensor::FeedForwardIn(0), vec![ffn_in, h]),
            attention,
        ]
        .map(|(tensor, shape)| (names.weight(tensor), shape));
        for (name, want) in expect {
            match shapes.get(&name) {
                Some(got) if *got == want => {}
                Some(got) => {
                    return Err(mismatch(format!(
                        "{name} is {got:?}, config.json implies {want:?}"
                    )));
                }
                None => return Err(mismatch(format!("no tensor {name}"))),
            }
        }
        Ok(())
    }
}

/// Tensor shapes by name.
type Shapes = std::collections::BTreeMap<String, Vec<u64>>;

/// The tensor shapes of one safetensors file's header, checking that every
/// tensor lies inside the file. Reads only the header.
fn header_shapes(path: &PathBuf) -> Result<Shapes> {
    let mismatch = |message: String| SpecError::WeightsMismatch {
        path: path.clone(),
        message,
    };
    let io = |source| SpecError::Io {
        path: path.clone(),
        source,
    };
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    if file_len < 8 {
        return Err(mismatch(format!(
            "{file_len} bytes: too short to be safetensors"
        )));
    }
    file.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_SAFETENSORS_HEADER || header_len + 8 > file_len {
        return Err(mismatch(format!(
            "a header of {header_len} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| mismatch(format!("header: {e}")))?;
    let data_len = file_len - 8 - header_len;
    let mut shapes = Shapes::new();
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
            .ok_or_else(|| mismatch(format!("{name}: no shape")))?;
        let end = entry
            .get("data_offsets")
            .and_then(|o| o.get(1))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| mismatch(format!("{name}: no data_offsets")))?;
        if end > data_len {
            return Err(mismatch(format!(
                "{name} ends at byte {end} of {data_len} bytes of data"
            )));
        }
        shapes.insert(name.clone(), shape);
    }
    Ok(shapes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert!(looks_like_hub_id("cross-encoder/ms-marco-MiniLM-L-6-v2"));
        assert!(!looks_like_hub_id("models/minilm-l6-ce/extra"));
        assert!(!looks_like_hub_id("./minilm"));
        assert!(!looks_like_hub_id("minilm"));
    }

    #[test]
    fn missing_dir_and_files_are_typed_errors() {
        let e = ModelFiles::resolve("/nonexistent/model/dir").unwrap_err();
        assert!(matches!(e, SpecError::ModelDirMissing(_)), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let e = ModelFiles::from_dir(dir.path()).unwrap_err();
        assert!(matches!(e, SpecError::FileMissing { ref file, .. } if file == "config.json"));
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        let e = ModelFiles::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(e, SpecError::FileMissing { ref file, .. } if file == "model.safetensors")
        );
        std::fs::write(dir.path().join("pytorch_model.bin"), "").unwrap();
        let files = ModelFiles::from_dir(dir.path()).unwrap();
        assert!(matches!(files.weights, Weights::Pytorch(_)));
        // A sharded checkpoint: its index names the shards, which must be
        // this directory's files.
        let index = dir.path().join(SHARD_INDEX);
        let map = |files: &[&str]| {
            let entries: Vec<String> = files
                .iter()
                .enumerate()
                .map(|(i, f)| format!("\"t{i}\": {f:?}"))
                .collect();
            format!("{{\"weight_map\": {{{}}}}}", entries.join(", "))
        };
        std::fs::write(
            &index,
            map(&["b.safetensors", "a.safetensors", "b.safetensors"]),
        )
        .unwrap();
        let e = ModelFiles::from_dir(dir.path()).unwrap_err();
        assert!(
            matches!(e, SpecError::FileMissing { ref file, .. } if file == "a.safetensors"),
            "{e}"
        );
        std::fs::write(dir.path().join("a.safetensors"), "").unwrap();
        std::fs::write(dir.path().join("b.safetensors"), "").unwrap();
        let files = ModelFiles::from_dir(dir.path()).unwrap();
        let Weights::Safetensors(shards) = files.weights else {
            panic!("safetensors shards")
        };
        assert_eq!(
            shards,
            vec![
                dir.path().join("a.safetensors"),
                dir.path().join("b.safetensors")
            ]
        );
        for hostile in [
            "../x.safetensors",
            "/etc/passwd",
            "sub/a.safetensors",
            "a.bin",
        ] {
            std::fs::write(&index, map(&[hostile])).unwrap();
            let e = ModelFiles::from_dir(dir.path()).unwrap_err();
            assert!(matches!(e, SpecError::Config { .. }), "{hostile}: {e}");
        }
    }
}
