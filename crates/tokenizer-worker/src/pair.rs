//! [`PairTokenizer`]: pair encoding with longest-first truncation.

use std::path::{Path, PathBuf};

use ce_common::TokenBatch;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Why a pair could not be tokenized.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// `tokenizer.json` is missing or unreadable.
    #[error("cannot load tokenizer from {path}: {message}")]
    Load {
        /// The file that was read.
        path: PathBuf,
        /// What the tokenizers library said.
        message: String,
    },
    /// The query is empty or only whitespace: there is nothing to rank against.
    #[error("query is empty or only whitespace")]
    EmptyQuery,
    /// Truncation was off and the pair is longer than the model takes.
    #[error(
        "input of {tokens} tokens exceeds the model's limit of {limit} tokens (truncation is off)"
    )]
    TooLong {
        /// Tokens the pair needs, special tokens included.
        tokens: usize,
        /// The model's maximum sequence length.
        limit: usize,
    },
    /// The tokenizers library failed on this input.
    #[error("tokenizer failed: {0}")]
    Encode(String),
}

/// How a pair longer than the model's limit is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Longest-first, dropping tokens from the end of each text (transformers' default).
    #[default]
    Right,
    /// Longest-first, dropping tokens from the start of each text.
    Left,
    /// No truncation: a pair over the limit is a [`TokenizeError::TooLong`].
    Off,
}

impl Truncation {
    /// The code a [`TextJob`](ce_common::frame::TextJob) carries.
    pub fn code(self) -> u32 {
        match self {
            Truncation::Right => 0,
            Truncation::Left => 1,
            Truncation::Off => 2,
        }
    }

    /// Parses a job's code; `None` for an unknown one.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Truncation::Right,
            1 => Truncation::Left,
            2 => Truncation::Off,
            _ => return None,
        })
    }
}

/// Encodes (query, passage) pairs with the model's tokenizer.
///
/// Holds one configured copy of the tokenizer per truncation mode, so that
/// encoding never reconfigures shared state and the type is `Sync`.
#[derive(Clone)]
pub struct PairTokenizer {
    right: Tokenizer,
    left: Tokenizer,
    untruncated: Tokenizer,
    max_length: usize,
}

impl std::fmt::Debug for PairTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairTokenizer")
            .field("max_length", &self.max_length)
            .finish_non_exhaustive()
    }
}

impl PairTokenizer {
    /// Loads `tokenizer.json` and truncates pairs to `max_length` tokens
    /// (special tokens included). Pass `min(configured limit, max_position_embeddings)`.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, TokenizeError> {
        let load_err = |message: String| TokenizeError::Load {
            path: path.to_path_buf(),
            message,
        };
        let base = Tokenizer::from_file(path).map_err(|e| load_err(e.to_string()))?;
        Self::from_tokenizer(base, max_length).map_err(|e| match e {
            TokenizeError::Encode(message) => load_err(message),
            other => other,
        })
    }

    /// Builds from an already loaded tokenizer (see [`PairTokenizer::from_file`]).
    pub fn from_tokenizer(base: Tokenizer, max_length: usize) -> Result<Self, TokenizeError> {
        let configure = |direction: Option<TruncationDirection>| {
            let mut t = base.clone();
            // Model directories often ship fixed padding and a short truncation
            // (this one: both at 128); a cross-encoder must see the whole pair.
            t.with_padding(None);
            let params = direction.map(|direction| TruncationParams {
                direction,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            });
            t.with_truncation(params)
                .map_err(|e| TokenizeError::Encode(e.to_string()))?;
            Ok::<_, TokenizeError>(t)
        };
        Ok(Self {
            right: configure(Some(TruncationDirection::Right))?,
            left: configure(Some(TruncationDirection::Left))?,
            untruncated: configure(None)?,
            max_length,
        })
    }

    /// The longest pair this tokenizer produces, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Encodes one pair and returns `(input_ids, type_ids)`.
    pub fn encode_pair(
        &self,
        query: &str,
        passage: &str,
        truncation: Truncation,
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizeError> {
        if query.trim().is_empty() {
            return Err(TokenizeError::EmptyQuery);
        }
        let tokenizer = match truncation {
            Truncation::Right => &self.right,
            Truncation::Left => &self.left,
            Truncation::Off => &self.untruncated,
        };
        let encoding = tokenizer
            .encode((query, passage), true)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let tokens = encoding.get_ids().len();
        if tokens > self.max_length {
            return Err(TokenizeError::TooLong {
                tokens,
                limit: self.max_length,
            });
        }
        Ok((
            encoding.get_ids().to_vec(),
            encoding.get_type_ids().to_vec(),
        ))
    }

    /// Encodes one pair and appends it to `batch`.
    pub fn encode_into(
        &self,
        batch: &mut TokenBatch,
        query: &str,
        passage: &str,
        truncation: Truncation,
    ) -> Result<(), TokenizeError> {
        let (ids, types) = self.encode_pair(query, passage, truncation)?;
        batch.push(&ids, &types);
        Ok(())
    }

    /// Encodes `query` against every passage into one packed batch.
    pub fn encode_query<S: AsRef<str>>(
        &self,
        query: &str,
        passages: &[S],
        truncation: Truncation,
    ) -> Result<TokenBatch, TokenizeError> {
        let mut batch = TokenBatch::with_capacity(passages.len(), passages.len() * 96);
        for passage in passages {
            self.encode_into(&mut batch, query, passage.as_ref(), truncation)?;
        }
        Ok(batch)
    }
}
