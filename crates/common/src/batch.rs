//! The packed token batch.
//!
//! A batch of `n` tokenized (query, passage) pairs is three flat arrays:
//!
//! ```text
//! input_ids:  [ pair0 tokens ... | pair1 tokens ... | ... ]   (u32, total_tokens)
//! type_ids:   [ 0 0 0 1 1 1 ...  | 0 0 1 1 ...      | ... ]   (u32, total_tokens)
//! offsets:    [ 0, len0, len0+len1, ..., total_tokens ]        (u32, n + 1)
//! ```
//!
//! Nothing is padded: the engine decides how to compute on it. The same layout
//! is what a ring frame carries, so a batch can be validated in place before
//! anything indexes with it.

use thiserror::Error;

/// Why a packed batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BatchError {
    /// The batch holds no pair.
    #[error("batch is empty: it holds no pair")]
    Empty,
    /// `input_ids` and `type_ids` differ in length.
    #[error("input_ids has {ids} tokens but type_ids has {types}")]
    TypeIdsLength {
        /// Length of `input_ids`.
        ids: usize,
        /// Length of `type_ids`.
        types: usize,
    },
    /// The offsets do not start at 0, are not monotone, or do not end at the token count.
    #[error("offsets are malformed: {0}")]
    Offsets(String),
    /// A pair has no token at all (a tokenized pair always has at least `[CLS]`).
    #[error("pair {pair} has no tokens")]
    EmptySequence {
        /// Index of the pair in the batch.
        pair: usize,
    },
    /// A pair is longer than the model can take.
    #[error("pair {pair} has {len} tokens, more than the model's maximum of {max}")]
    SequenceTooLong {
        /// Index of the pair in the batch.
        pair: usize,
        /// Its length in tokens.
        len: usize,
        /// The model's limit.
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocab {
        /// The offending id.
        id: u32,
        /// Its position in `input_ids`.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A token type id is outside the model's type vocabulary.
    #[error(
        "type id {id} at position {position} is outside the model's {type_vocab_size} token types"
    )]
    TypeOutOfRange {
        /// The offending type id.
        id: u32,
        /// Its position in `type_ids`.
        position: usize,
        /// The number of token types.
        type_vocab_size: usize,
    },
}

/// Limits a batch is checked against before a model touches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Vocabulary size: every id must be below it.
    pub vocab_size: usize,
    /// Number of token types: every type id must be below it.
    pub type_vocab_size: usize,
    /// Longest sequence the model takes (position embeddings).
    pub max_sequence_len: usize,
}

/// Flat, unpadded token tensors of a batch of pairs (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids of every pair, back to back.
    pub input_ids: Vec<u32>,
    /// Token type (segment) ids, parallel to `input_ids`.
    pub type_ids: Vec<u32>,
    /// `len() + 1` offsets into `input_ids`: pair `i` is `offsets[i]..offsets[i + 1]`.
    pub offsets: Vec<u32>,
}

impl TokenBatch {
    /// An empty batch with room for `pairs` pairs of `tokens` tokens in all.
    pub fn with_capacity(pairs: usize, tokens: usize) -> Self {
        let mut offsets = Vec::with_capacity(pairs + 1);
        offsets.push(0);
        Self {
            input_ids: Vec::with_capacity(tokens),
            type_ids: Vec::with_capacity(tokens),
            offsets,
        }
    }

    /// Appends one sequence. `ids` and `types` must have the same length.
    ///
    /// # Panics
    /// If the lengths differ or the batch would exceed `u32::MAX` tokens:
    /// both are programming errors of the caller, never client input.
    pub fn push(&mut self, ids: &[u32], types: &[u32]) {
        assert_eq!(ids.len(), types.len(), "ids and types must be parallel");
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.input_ids.extend_from_slice(ids);
        self.type_ids.extend_from_slice(types);
        let end = u32::try_from(self.input_ids.len()).expect("batch exceeds u32::MAX tokens");
        self.offsets.push(end);
    }

    /// Appends every pair of `other`.
    pub fn extend_from(&mut self, other: &TokenBatch) {
        for i in 0..other.len() {
            let r = other.range(i);
            self.push(&other.input_ids[r.clone()], &other.type_ids[r]);
        }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// True when the batch holds no pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of real tokens.
    pub fn total_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Token range of pair `i`. Only meaningful on a validated batch.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i] as usize..self.offsets[i + 1] as usize
    }

    /// Length of pair `i` in tokens. Only meaningful on a validated batch.
    pub fn seq_len(&self, i: usize) -> usize {
        (self.offsets[i + 1] - self.offsets[i]) as usize
    }

    /// Length of the longest pair.
    pub fn max_seq_len(&self) -> usize {
        (0..self.len()).map(|i| self.seq_len(i)).max().unwrap_or(0)
    }

    /// Token ids of pair `i`.
    pub fn ids(&self, i: usize) -> &[u32] {
        &self.input_ids[self.range(i)]
    }

    /// Type ids of pair `i`.
    pub fn types(&self, i: usize) -> &[u32] {
        &self.type_ids[self.range(i)]
    }

    /// Checks the structure (parallel arrays, offsets monotone from 0 to the
    /// token count, no empty pair) without model limits.
    pub fn validate_layout(&self) -> Result<(), BatchError> {
        if self.input_ids.len() != self.type_ids.len() {
            return Err(BatchError::TypeIdsLength {
                ids: self.input_ids.len(),
                types: self.type_ids.len(),
            });
        }
        if self.offsets.len() < 2 {
            return Err(BatchError::Empty);
        }
        if self.offsets[0] != 0 {
            return Err(BatchError::Offsets(format!(
                "first offset is {}, not 0",
                self.offsets[0]
            )));
        }
        for (pair, w) in self.offsets.windows(2).enumerate() {
            if w[1] < w[0] {
                return Err(BatchError::Offsets(format!(
                    "offset {} ({}) is below offset {} ({})",
                    pair + 1,
                    w[1],
                    pair,
                    w[0]
                )));
            }
            if w[1] == w[0] {
                return Err(BatchError::EmptySequence { pair });
            }
        }
        let last = *self.offsets.last().unwrap_or(&0) as usize;
        if last != self.input_ids.len() {
            return Err(BatchError::Offsets(format!(
                "last offset is {last} but the batch has {} tokens",
                self.input_ids.len()
            )));
        }
        Ok(())
    }

    /// Full validation: layout plus every id, type id and length against the
    /// model's limits. After `Ok`, indexing with any field cannot go out of bounds.
    pub fn validate(&self, limits: &BatchLimits) -> Result<(), BatchError> {
        self.validate_layout()?;
        for pair in 0..self.len() {
            let len = self.seq_len(pair);
            if len > limits.max_sequence_len {
                return Err(BatchError::SequenceTooLong {
                    pair,
                    len,
                    max: limits.max_sequence_len,
                });
            }
        }
        if let Some((position, &id)) = self
            .input_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= limits.vocab_size)
        {
            return Err(BatchError::TokenOutOfVocab {
                id,
                position,
                vocab_size: limits.vocab_size,
            });
        }
        if let Some((position, &id)) = self
            .type_ids
            .iter()
            .enumerate()
            .find(|&(_, &id)| id as usize >= limits.type_vocab_size)
        {
            return Err(BatchError::TypeOutOfRange {
                id,
                position,
                type_vocab_size: limits.type_vocab_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        vocab_size: 100,
        type_vocab_size: 2,
        max_sequence_len: 8,
    };

    fn two_pairs() -> TokenBatch {
        let mut b = TokenBatch::with_capacity(2, 7);
        b.push(&[1, 2, 3], &[0, 0, 1]);
        b.push(&[4, 5, 6, 7], &[0, 1, 1, 1]);
        b
    }

    #[test]
    fn push_builds_offsets() {
        let b = two_pairs();
        assert_eq!(b.offsets, vec![0, 3, 7]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.ids(1), &[4, 5, 6, 7]);
        assert_eq!(b.types(0), &[0, 0, 1]);
        assert_eq!(b.max_seq_len(), 4);
        assert_eq!(b.validate(&LIMITS), Ok(()));
    }

    #[test]
    fn default_batch_is_empty_and_rejected() {
        let b = TokenBatch::default();
        assert!(b.is_empty());
        assert_eq!(b.validate(&LIMITS), Err(BatchError::Empty));
    }

    #[test]
    fn rejects_each_malformation() {
        let mut b = two_pairs();
        b.type_ids.pop();
        assert!(matches!(
            b.validate(&LIMITS),
            Err(BatchError::TypeIdsLength { .. })
        ));

        let mut b = two_pairs();
        b.offsets[0] = 1;
        assert!(matches!(b.validate(&LIMITS), Err(BatchError::Offsets(_))));

        let mut b = two_pairs();
        b.offsets[1] = 9;
        assert!(matches!(b.validate(&LIMITS), Err(BatchError::Offsets(_))));

        let mut b = two_pairs();
        b.offsets[2] = 6;
        assert!(matches!(b.validate(&LIMITS), Err(BatchError::Offsets(_))));

        let mut b = two_pairs();
        b.offsets[1] = 0;
        assert_eq!(
            b.validate(&LIMITS),
            Err(BatchError::EmptySequence { pair: 0 })
        );

        let mut b = two_pairs();
        b.input_ids[5] = 100;
        assert_eq!(
            b.validate(&LIMITS),
            Err(BatchError::TokenOutOfVocab {
                id: 100,
                position: 5,
                vocab_size: 100
            })
        );

        let mut b = two_pairs();
        b.type_ids[2] = 2;
        assert!(matches!(
            b.validate(&LIMITS),
            Err(BatchError::TypeOutOfRange { .. })
        ));

        let mut b = TokenBatch::default();
        b.push(&[1; 9], &[0; 9]);
        assert!(matches!(
            b.validate(&LIMITS),
            Err(BatchError::SequenceTooLong { len: 9, .. })
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..10_000 {
            let n = rng.random_range(0..6);
            let b = TokenBatch {
                input_ids: (0..rng.random_range(0..12))
                    .map(|_| rng.random_range(0..120))
                    .collect(),
                type_ids: (0..rng.random_range(0..12))
                    .map(|_| rng.random_range(0..3))
                    .collect(),
                offsets: (0..n).map(|_| rng.random_range(0..14)).collect(),
            };
            if b.validate(&LIMITS).is_ok() {
                for i in 0..b.len() {
                    assert!(!b.ids(i).is_empty());
                }
            }
        }
    }

    #[test]
    fn extend_from_appends_pairs() {
        let mut a = two_pairs();
        a.extend_from(&two_pairs());
        assert_eq!(a.len(), 4);
        assert_eq!(a.offsets, vec![0, 3, 7, 10, 14]);
        assert_eq!(a.validate(&LIMITS), Ok(()));
    }
}
