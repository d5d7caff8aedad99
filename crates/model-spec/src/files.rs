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
    /// `model.safetensors` (memory-mapped).
    Safetensors(PathBuf),
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
            Ok(p) => Weights::Safetensors(p),
            Err(e) => match need("pytorch_model.bin") {
                Ok(p) => Weights::Pytorch(p),
                Err(_) => return Err(e),
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
            Ok(p) => Weights::Safetensors(p),
            Err(first) => match get("pytorch_model.bin") {
                Ok(p) => Weights::Pytorch(p),
                Err(_) => return Err(first),
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
        let Weights::Safetensors(path) = self else {
            return Ok(());
        };
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
        let mut shapes = std::collections::BTreeMap::new();
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
    }
}
