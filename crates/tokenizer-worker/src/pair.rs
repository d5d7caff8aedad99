//! [`PairTokenizer`]: pair encoding with longest-first truncation.

use std::path::{Path, PathBuf};

use ce_common::TokenBatch;
use ce_common::frame::{QueryIds, WindowPlan};
use ce_model_spec::PromptTemplate;
use tokenizers::{
    Encoding, PostProcessor, Token, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::fast::{FastTokenizer, fast};

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
    /// Truncation was off and the query alone (with the pair's special
    /// tokens) is longer than the model takes: no document can be scored.
    #[error(
        "query of {tokens} tokens (with special tokens) exceeds the model's limit of {limit} tokens (truncation is off)"
    )]
    QueryTooLong {
        /// Tokens the query and the pair's special tokens need.
        tokens: usize,
        /// The model's maximum sequence length.
        limit: usize,
    },
    /// The tokenizers library failed on this input.
    #[error("tokenizer failed: {0}")]
    Encode(String),
    /// An instruction was given to a model that scores no prompt.
    #[error("this model takes no instruction: only LLM rerankers (a prompt template) do")]
    NoInstructions,
    /// The prompt's fixed parts and the instruction leave no room for a
    /// query and a document.
    #[error(
        "the prompt and instruction take {tokens} tokens of the model's limit of {limit}: no room for the query and a document"
    )]
    PromptTooLong {
        /// Tokens of the prompt's fixed parts and the instruction.
        tokens: usize,
        /// The model's maximum sequence length.
        limit: usize,
    },
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
    right: FastTokenizer,
    left: FastTokenizer,
    untruncated: FastTokenizer,
    max_length: usize,
    /// An LLM reranker's prompt: pairs are that prompt's text, not the
    /// tokenizer's pair template.
    prompt: Option<Prompt>,
}

/// A prompt template, the whitespace that leads its document and the ids
/// of its suffix (the same for every pair).
#[derive(Debug, Clone)]
struct Prompt {
    template: PromptTemplate,
    lead: String,
    suffix: Vec<u32>,
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
            Ok::<_, TokenizeError>(fast(&t))
        };
        Ok(Self {
            right: configure(Some(TruncationDirection::Right))?,
            left: configure(Some(TruncationDirection::Left))?,
            untruncated: configure(None)?,
            max_length,
            prompt: None,
        })
    }

    /// The same tokenizer scoring `template`'s prompt: a pair is the
    /// template with its query and document filled in, tokenized as one
    /// text without the tokenizer's own special tokens (as Qwen3-Reranker's
    /// model card does). Truncation cuts the document, never the prompt's
    /// fixed parts (see [`encode_query_ids_for`](Self::encode_query_ids_for)).
    pub fn with_prompt(mut self, template: PromptTemplate) -> Result<Self, TokenizeError> {
        let parts = template.parts(None);
        let (lead, suffix) = (
            parts.document_lead.to_string(),
            self.plain_ids(parts.suffix)?,
        );
        self.prompt = Some(Prompt {
            template,
            lead,
            suffix,
        });
        Ok(self)
    }

    /// The prompt template pairs are scored in, if the model has one.
    pub fn prompt(&self) -> Option<&PromptTemplate> {
        self.prompt.as_ref().map(|p| &p.template)
    }

    /// The id of a token of the vocabulary (e.g. a yes/no reranker's "yes").
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.untruncated.token_to_id(token)
    }

    /// `text`'s ids without special tokens, untruncated.
    fn plain_ids(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        Ok(self
            .untruncated
            .encode(text, false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?
            .get_ids()
            .to_vec())
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
        if self.prompt.is_some() {
            let query = self.encode_query_ids(query, truncation)?;
            return self.encode_with_query(&query, passage, truncation);
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

    /// The query's ids, tokenized once for every pair of a request: the
    /// length longest-first truncation weighs it at (see
    /// [`weighed_len`](Self::weighed_len)) and its ids cut to `max_length`
    /// at the end `truncation` removes — no pair can use more.
    /// With truncation off, a query that cannot fit with any document is
    /// refused here.
    pub fn encode_query_ids(
        &self,
        query: &str,
        truncation: Truncation,
    ) -> Result<QueryIds, TokenizeError> {
        self.encode_query_ids_for(query, None, truncation)
    }

    /// [`encode_query_ids`](Self::encode_query_ids) with a request's
    /// instruction (a prompted model's default where `None`; a model
    /// without a prompt refuses one).
    ///
    /// With a prompt, the ids are those of the prompt up to the document
    /// (its fixed parts, the instruction and the query, tokenized as one
    /// text), leaving at least one token for a document before the
    /// suffix. The truncation rule: the document is cut first (at the end
    /// `truncation` removes); only when the prompt, instruction and query
    /// alone leave no room for a document token is the query cut (same
    /// end) to leave one; the prompt's fixed parts and the instruction are
    /// never cut (too long a prompt is [`TokenizeError::PromptTooLong`]).
    pub fn encode_query_ids_for(
        &self,
        query: &str,
        instruction: Option<&str>,
        truncation: Truncation,
    ) -> Result<QueryIds, TokenizeError> {
        if query.trim().is_empty() {
            return Err(TokenizeError::EmptyQuery);
        }
        let Some(prompt) = &self.prompt else {
            if instruction.is_some() {
                return Err(TokenizeError::NoInstructions);
            }
            return self.encode_plain_query(query, truncation);
        };
        let parts = prompt.template.parts(instruction);
        let head = self.plain_ids(&format!(
            "{}{query}{}",
            parts.before_query, parts.after_query
        ))?;
        let fits = |tokens: usize| tokens + prompt.suffix.len() < self.max_length;
        let ids = if fits(head.len()) {
            head
        } else if truncation == Truncation::Off {
            return Err(TokenizeError::QueryTooLong {
                tokens: head.len() + prompt.suffix.len(),
                limit: self.max_length,
            });
        } else {
            let before = self.plain_ids(&parts.before_query)?;
            let after = self.plain_ids(parts.after_query)?;
            let fixed = before.len() + after.len() + prompt.suffix.len();
            if fixed + 2 > self.max_length {
                return Err(TokenizeError::PromptTooLong {
                    tokens: fixed,
                    limit: self.max_length,
                });
            }
            let room = self.max_length - fixed - 1;
            let q = self.plain_ids(query)?;
            let kept = match truncation {
                Truncation::Left => &q[q.len() - room.min(q.len())..],
                _ => &q[..room.min(q.len())],
            };
            [&before[..], kept, &after[..]].concat()
        };
        Ok(QueryIds {
            tokens: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            ids,
        })
    }

    /// A query's ids for the tokenizer's own pair template.
    fn encode_plain_query(
        &self,
        query: &str,
        truncation: Truncation,
    ) -> Result<QueryIds, TokenizeError> {
        let encoding = self
            .untruncated
            .encode(query, false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let ids = encoding.get_ids();
        let keep = ids.len().min(self.max_length);
        let (kept, weighed) = match truncation {
            Truncation::Right => (&ids[..keep], self.weighed_len(&encoding, false)),
            Truncation::Left => (&ids[ids.len() - keep..], self.weighed_len(&encoding, true)),
            Truncation::Off => {
                let tokens = ids.len() + self.pair_specials();
                if tokens > self.max_length {
                    return Err(TokenizeError::QueryTooLong {
                        tokens,
                        limit: self.max_length,
                    });
                }
                (ids, ids.len())
            }
        };
        Ok(QueryIds {
            tokens: u32::try_from(weighed).unwrap_or(u32::MAX),
            ids: kept.to_vec(),
        })
    }

    /// The length longest-first truncation weighs a text at: the tokens
    /// the library produces when it tokenizes the text of a pair with
    /// truncation on. It stops, at a word's end, once `max_length` tokens
    /// are made (counting from the end the truncation cuts last, here
    /// `from_end` for left truncation), and a pair's halves are then
    /// compared at those lengths. `encoding` is the whole text's.
    fn weighed_len(&self, encoding: &Encoding, from_end: bool) -> usize {
        let words = encoding.get_word_ids();
        let special = encoding.get_special_tokens_mask();
        if words.len() <= self.max_length {
            return words.len();
        }
        let order: Box<dyn Iterator<Item = usize>> = if from_end {
            Box::new((0..words.len()).rev())
        } else {
            Box::new(0..words.len())
        };
        let mut total = 0;
        let mut order = order.peekable();
        while let Some(i) = order.next() {
            total += 1;
            let word_ends = order.peek().is_none_or(|&next| words[next] != words[i]);
            // The library tokenizes a word at a time and checks the limit
            // after each word it tokenized (not after added tokens).
            if word_ends && special[i] == 0 && total >= self.max_length {
                return total;
            }
        }
        total
    }

    /// Special tokens the post-processor adds to a pair.
    fn pair_specials(&self) -> usize {
        if let Some(prompt) = &self.prompt {
            return prompt.suffix.len();
        }
        self.untruncated
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true))
    }

    /// Encodes the pair of a query tokenized by
    /// [`encode_query_ids`](Self::encode_query_ids) and `passage`, with the
    /// ids and segments [`encode_pair`](Self::encode_pair) gives the two
    /// texts (a test checks it on 1,200 random pairs, each truncation). The passage is
    /// tokenized alone; both are cut to the lengths of the library's
    /// longest-first rule, at the lengths it weighs them
    /// ([`weighed_len`](Self::weighed_len)); the library's post-processor
    /// adds the special tokens and segments.
    pub fn encode_with_query(
        &self,
        query: &QueryIds,
        passage: &str,
        truncation: Truncation,
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizeError> {
        if let Some(prompt) = &self.prompt {
            let doc = self.plain_ids(&format!("{}{passage}", prompt.lead))?;
            let room = self
                .max_length
                .saturating_sub(query.ids.len() + prompt.suffix.len());
            let kept = match truncation {
                Truncation::Off => &doc[..],
                Truncation::Right => &doc[..room.min(doc.len())],
                Truncation::Left => &doc[doc.len() - room.min(doc.len())..],
            };
            return self.assemble(&query.ids, kept);
        }
        let passage = self
            .untruncated
            .encode(passage, false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let weighed = match truncation {
            Truncation::Off => passage.len(),
            _ => self.weighed_len(&passage, truncation == Truncation::Left),
        };
        let passage = passage.get_ids();
        let query_weighed = query.tokens as usize;
        let (q, p) = match truncation {
            Truncation::Off => (query_weighed, passage.len()),
            _ => {
                let budget = self.max_length.saturating_sub(self.pair_specials());
                let (q, p) = longest_first(query_weighed, weighed, budget);
                (q, p.min(passage.len()))
            }
        };
        // Both cut at the end truncation removes (the query's ids were cut
        // so already, to at most `max_length` ≥ `q`).
        let (q_ids, p_ids) = match truncation {
            Truncation::Left => (
                &query.ids[query.ids.len().saturating_sub(q)..],
                &passage[passage.len() - p..],
            ),
            _ => (&query.ids[..q.min(query.ids.len())], &passage[..p]),
        };
        self.assemble(q_ids, p_ids)
    }

    /// The pair of query ids `q_ids` and passage ids `p_ids`: the
    /// library's post-processor adds the special tokens and segments.
    fn assemble(
        &self,
        q_ids: &[u32],
        p_ids: &[u32],
    ) -> Result<(Vec<u32>, Vec<u32>), TokenizeError> {
        if let Some(prompt) = &self.prompt {
            let ids = [q_ids, p_ids, &prompt.suffix].concat();
            if ids.len() > self.max_length {
                return Err(TokenizeError::TooLong {
                    tokens: ids.len(),
                    limit: self.max_length,
                });
            }
            let types = vec![0; ids.len()];
            return Ok((ids, types));
        }
        let tokens = |ids: &[u32]| {
            ids.iter()
                .map(|&id| Token::new(id, String::new(), (0, 0)))
                .collect()
        };
        // Segments as the library gives the first and second text of a
        // pair; the post-processor sets its own where it has them.
        let encoding = self
            .untruncated
            .post_process(
                Encoding::from_tokens(tokens(q_ids), 0),
                Some(Encoding::from_tokens(tokens(p_ids), 1)),
                true,
            )
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let total = encoding.get_ids().len();
        if total > self.max_length {
            return Err(TokenizeError::TooLong {
                tokens: total,
                limit: self.max_length,
            });
        }
        Ok((
            encoding.get_ids().to_vec(),
            encoding.get_type_ids().to_vec(),
        ))
    }

    /// The pairs of the query and `passage` split into windows by `plan`
    /// (which must be on). A passage that fits beside the query is one
    /// window, the very pair [`encode_with_query`](Self::encode_with_query)
    /// gives with right truncation. A longer one is cut to
    /// `plan.doc_tokens`, the query keeps at most half of the room (its
    /// start), and the passage is split into windows of the rest that
    /// share `plan.overlap` tokens with the one before (at most one less
    /// than a window), from its start, `plan.max_windows` at most.
    pub fn encode_windows(
        &self,
        query: &QueryIds,
        passage: &str,
        plan: WindowPlan,
    ) -> Result<Vec<WindowPair>, TokenizeError> {
        // A prompted model's document follows the whitespace that leads it
        // in the prompt; offsets are counted in the passage alone.
        let lead = self.prompt.as_ref().map_or("", |p| p.lead.as_str());
        let encoding = self
            .untruncated
            .encode_char_offsets(format!("{lead}{passage}").as_str(), false)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        let shift = lead.chars().count();
        let offsets: Vec<(usize, usize)> = encoding
            .get_offsets()
            .iter()
            .map(|&(a, b)| (a.saturating_sub(shift), b.saturating_sub(shift)))
            .collect();
        let ids = encoding.get_ids();
        let len = match plan.doc_tokens {
            0 => ids.len(),
            cap => ids.len().min(cap as usize),
        };
        // A window at either end of the passage reaches that end, so the
        // windows' characters cover the whole text.
        let count = passage.chars().count();
        let chars = |tokens: &std::ops::Range<usize>| -> (u32, u32) {
            let start = match tokens.start {
                0 => 0,
                i => offsets[i].0,
            };
            let end = if tokens.end == ids.len() {
                count
            } else {
                offsets[tokens.end - 1].1
            };
            (start as u32, end as u32)
        };
        let budget = self.max_length.saturating_sub(self.pair_specials());
        if query.tokens as usize + len <= budget {
            let (pair_ids, types) = self.assemble(&query.ids, &ids[..len])?;
            let (start, end) = chars(&(0..len));
            return Ok(vec![WindowPair {
                ids: pair_ids,
                types,
                tokens: 0..len,
                start,
                end,
            }]);
        }
        // A prompt is never cut (its query was, to leave a document room).
        let q_ids = match self.prompt {
            Some(_) => &query.ids[..],
            None => &query.ids[..query.ids.len().min(budget / 2)],
        };
        let window = budget.saturating_sub(q_ids.len()).max(1);
        let step = window - (plan.overlap as usize).min(window - 1);
        let mut windows = Vec::new();
        let mut start = 0;
        loop {
            let end = (start + window).min(len);
            let (pair_ids, types) = self.assemble(q_ids, &ids[start..end])?;
            let (from, to) = chars(&(start..end));
            windows.push(WindowPair {
                ids: pair_ids,
                types,
                tokens: start..end,
                start: from,
                end: to,
            });
            if end >= len || windows.len() >= plan.max_windows as usize {
                return Ok(windows);
            }
            start += step;
        }
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
        self.encode_query_for(query, None, passages, truncation)
    }

    /// [`encode_query`](Self::encode_query) with a request's instruction
    /// (see [`encode_query_ids_for`](Self::encode_query_ids_for)); a
    /// prompted model's query is tokenized once.
    pub fn encode_query_for<S: AsRef<str>>(
        &self,
        query: &str,
        instruction: Option<&str>,
        passages: &[S],
        truncation: Truncation,
    ) -> Result<TokenBatch, TokenizeError> {
        let mut batch = TokenBatch::with_capacity(passages.len(), passages.len() * 96);
        if self.prompt.is_some() || instruction.is_some() {
            let ids = self.encode_query_ids_for(query, instruction, truncation)?;
            for passage in passages {
                let (ids, types) = self.encode_with_query(&ids, passage.as_ref(), truncation)?;
                batch.push(&ids, &types);
            }
            return Ok(batch);
        }
        for passage in passages {
            self.encode_into(&mut batch, query, passage.as_ref(), truncation)?;
        }
        Ok(batch)
    }
}

/// One window of a passage as a pair (see [`PairTokenizer::encode_windows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPair {
    /// The pair's ids.
    pub ids: Vec<u32>,
    /// Its segments.
    pub types: Vec<u32>,
    /// Which of the passage's tokens it holds.
    pub tokens: std::ops::Range<usize>,
    /// Character offset of its first token in the passage.
    pub start: u32,
    /// Character offset just past its last token.
    pub end: u32,
}

/// Lengths of a pair of `first` and `second` tokens cut to `budget`
/// tokens longest-first, as the tokenizers library cuts them: the shorter
/// keeps its length if the longer can take the rest, else both get half
/// and the longer (the second, on a tie) the odd token.
fn longest_first(first: usize, second: usize, budget: usize) -> (usize, usize) {
    if first + second <= budget {
        return (first, second);
    }
    let swapped = first > second;
    let short = first.min(second);
    let mut n1 = short;
    let mut n2 = if short > budget {
        short
    } else {
        short.max(budget - short)
    };
    if n1 + n2 > budget {
        n1 = budget / 2;
        n2 = n1 + budget % 2;
    }
    if swapped { (n2, n1) } else { (n1, n2) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn default_model_tokenizer(max_length: usize) -> PairTokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/minilm-l6-ce/tokenizer.json"
        );
        PairTokenizer::from_file(Path::new(path), max_length)
            .expect("the default model (scripts/fetch_model.sh)")
    }

    fn random_text(rng: &mut rand::rngs::StdRng, max_words: usize) -> String {
        const WORDS: &[&str] = &[
            "the",
            "reranker",
            "scores",
            "passages",
            "東京",
            "naïve",
            "x",
            "zzzzqqq",
            "!",
            "état",
            "1234",
            "un-believable",
            "日本語の文",
            "emoji🙂",
            "ß",
            " ",
            "over-long",
        ];
        (0..rng.random_range(0..max_words))
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The query tokenized once gives every pair exactly the ids and
    /// segments of tokenizing the two texts together, for every truncation
    /// and for queries and passages shorter and far longer than the limit.
    #[test]
    fn a_query_tokenized_once_encodes_every_pair_identically() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        for max_length in [16, 64, 512] {
            let t = default_model_tokenizer(max_length);
            for case in 0..400 {
                let query = format!("q{case} {}", random_text(&mut rng, [4, 40, 400][case % 3]));
                let passage = random_text(&mut rng, [3, 60, 900][(case / 3) % 3]);
                for truncation in [Truncation::Right, Truncation::Left, Truncation::Off] {
                    let whole = t.encode_pair(&query, &passage, truncation);
                    let once = t
                        .encode_query_ids(&query, truncation)
                        .and_then(|q| t.encode_with_query(&q, &passage, truncation));
                    match (whole, once) {
                        (Ok(a), Ok(b)) => {
                            assert_eq!(a, b, "{max_length} {truncation:?} {query:?} / {passage:?}")
                        }
                        (
                            Err(TokenizeError::TooLong { .. }),
                            Err(TokenizeError::TooLong { .. } | TokenizeError::QueryTooLong { .. }),
                        ) => {
                            assert_eq!(truncation, Truncation::Off)
                        }
                        (a, b) => {
                            panic!("{truncation:?}: {a:?} vs {b:?} for {query:?} / {passage:?}")
                        }
                    }
                }
            }
        }
    }

    /// Windows cover a long passage from its first token to its last,
    /// each sharing exactly the stated overlap with the one before, each
    /// pair holding the query's ids and its window's ids, none over the
    /// limit; a short passage is one window, the ordinary pair.
    #[test]
    fn windows_cover_a_long_passage_with_the_stated_overlap() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(24);
        let t = default_model_tokenizer(64);
        let query = t
            .encode_query_ids("what does a reranker do", Truncation::Right)
            .unwrap();
        for case in 0..60 {
            let passage = random_text(&mut rng, 300 + case * 10);
            let ids = t.untruncated.encode(passage.as_str(), false).unwrap();
            let ids = ids.get_ids();
            let overlap = [0u32, 1, 8, 30, 500][case % 5];
            let plan = WindowPlan {
                max_windows: 10_000,
                overlap,
                doc_tokens: 0,
            };
            let windows = t.encode_windows(&query, &passage, plan).unwrap();
            if query.ids.len() + ids.len() + 3 <= 64 {
                assert_eq!(windows.len(), 1);
                continue;
            }
            let room = 64 - 3 - query.ids.len();
            let shared = (overlap as usize).min(room - 1);
            assert_eq!(windows[0].tokens.start, 0);
            assert_eq!(windows.last().unwrap().tokens.end, ids.len());
            assert_eq!(
                (windows[0].start, windows.last().unwrap().end),
                (0, passage.chars().count() as u32)
            );
            for (i, w) in windows.iter().enumerate() {
                assert!(w.ids.len() <= 64);
                let q = query.ids.len();
                assert_eq!(
                    &w.ids[1..1 + q],
                    &query.ids[..],
                    "the query leads every window"
                );
                assert_eq!(&w.ids[2 + q..w.ids.len() - 1], &ids[w.tokens.clone()]);
                if i + 1 < windows.len() {
                    assert_eq!(w.tokens.len(), room, "every window but the last is full");
                    let next = &windows[i + 1];
                    assert_eq!(
                        next.tokens.start,
                        w.tokens.end - shared,
                        "overlap {overlap}"
                    );
                    assert!(w.start <= next.start);
                    if shared > 0 {
                        assert!(next.start <= w.end, "shared tokens share characters");
                    } else {
                        let between: String = passage
                            .chars()
                            .skip(w.end as usize)
                            .take(next.start.saturating_sub(w.end) as usize)
                            .collect();
                        assert!(
                            between.trim().is_empty(),
                            "no text between windows: {between:?}"
                        );
                    }
                }
            }
        }
        let long = "word ".repeat(400);
        let capped = |max_windows, doc_tokens| {
            t.encode_windows(
                &query,
                &long,
                WindowPlan {
                    max_windows,
                    overlap: 4,
                    doc_tokens,
                },
            )
            .unwrap()
        };
        assert_eq!(capped(2, 0).len(), 2, "max_windows caps the windows");
        let cut = capped(100, 50);
        assert_eq!(
            cut.last().unwrap().tokens.end,
            50,
            "doc_tokens cuts the passage first"
        );
        assert_eq!(cut.last().unwrap().end as usize, 50 * 5 - 1);
        let short = t
            .encode_windows(
                &query,
                "a short passage",
                WindowPlan {
                    max_windows: 3,
                    overlap: 4,
                    doc_tokens: 0,
                },
            )
            .unwrap();
        let pair = t
            .encode_with_query(&query, "a short passage", Truncation::Right)
            .unwrap();
        assert_eq!(
            (short.len(), (short[0].ids.clone(), short[0].types.clone())),
            (1, pair)
        );
        assert_eq!((short[0].start, short[0].end), (0, 15));
    }

    #[test]
    fn a_query_too_long_without_truncation_is_refused_once() {
        let t = default_model_tokenizer(16);
        let e = t
            .encode_query_ids(&"word ".repeat(40), Truncation::Off)
            .unwrap_err();
        assert!(
            matches!(
                e,
                TokenizeError::QueryTooLong {
                    tokens: 43,
                    limit: 16
                }
            ),
            "{e}"
        );
        assert_eq!(
            t.encode_query_ids(&"word ".repeat(40), Truncation::Right)
                .unwrap()
                .ids
                .len(),
            16
        );
        assert!(matches!(
            t.encode_query_ids("  ", Truncation::Right),
            Err(TokenizeError::EmptyQuery)
        ));
    }

    fn qwen_tokenizer(max_length: usize) -> PairTokenizer {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/families/qwen3-reranker/tokenizer.json"
        );
        PairTokenizer::from_file(Path::new(path), max_length)
            .and_then(|t| t.with_prompt(PromptTemplate::qwen3_reranker()))
            .expect("the Qwen3 fixture (scripts/family_fixtures.py)")
    }

    /// The prompt's truncation rule: the document is cut first (the end
    /// the truncation removes); the query only when it leaves no document
    /// token; the prompt's fixed parts and the instruction never; a prompt
    /// and instruction too long for any query is refused; without
    /// truncation an over-long pair is an error.
    #[test]
    fn a_prompt_keeps_its_fixed_parts_and_cuts_the_document_first() {
        let t = qwen_tokenizer(160);
        let suffix = t.prompt.as_ref().unwrap().suffix.clone();
        let parts = PromptTemplate::qwen3_reranker();
        let parts = parts.parts(None);
        let head = |q: &str| {
            t.plain_ids(&format!("{}{q}{}", parts.before_query, parts.after_query))
                .unwrap()
        };
        let doc = "word ".repeat(300);
        let doc_ids = t.plain_ids(&format!(" {doc}")).unwrap();
        for truncation in [Truncation::Right, Truncation::Left] {
            let query = t.encode_query_ids("a short query", truncation).unwrap();
            assert_eq!(query.ids, head("a short query"));
            let (ids, types) = t.encode_with_query(&query, &doc, truncation).unwrap();
            assert_eq!(ids.len(), 160);
            assert!(types.iter().all(|&x| x == 0));
            assert_eq!(
                &ids[..query.ids.len()],
                &query.ids[..],
                "the prompt is whole"
            );
            assert_eq!(
                &ids[ids.len() - suffix.len()..],
                &suffix[..],
                "so is its suffix"
            );
            let kept = &ids[query.ids.len()..ids.len() - suffix.len()];
            match truncation {
                Truncation::Left => assert_eq!(kept, &doc_ids[doc_ids.len() - kept.len()..]),
                _ => assert_eq!(kept, &doc_ids[..kept.len()]),
            }
            // A query too long for any document is cut, the prompt kept.
            let long = "query ".repeat(200);
            let cut = t.encode_query_ids(&long, truncation).unwrap();
            assert_eq!(cut.ids.len() + suffix.len() + 1, 160);
            let before = t.plain_ids(&parts.before_query).unwrap();
            let after = t.plain_ids(parts.after_query).unwrap();
            assert_eq!(&cut.ids[..before.len()], &before[..]);
            assert_eq!(&cut.ids[cut.ids.len() - after.len()..], &after[..]);
            let (ids, _) = t.encode_with_query(&cut, &doc, truncation).unwrap();
            assert_eq!(ids.len(), 160, "one document token");
        }
        // Untruncated: the whole pair or an error.
        let short = t.encode_query_ids("q", Truncation::Off).unwrap();
        let (ids, _) = t
            .encode_with_query(&short, "a document", Truncation::Off)
            .unwrap();
        assert_eq!(
            ids,
            t.encode_pair("q", "a document", Truncation::Off).unwrap().0
        );
        assert!(matches!(
            t.encode_with_query(&short, &doc, Truncation::Off),
            Err(TokenizeError::TooLong { .. })
        ));
        assert!(matches!(
            t.encode_query_ids(&"query ".repeat(200), Truncation::Off),
            Err(TokenizeError::QueryTooLong { .. })
        ));
        // An instruction is the prompt's: never cut, refused when too long.
        let own = t
            .encode_query_ids_for("q", Some("find the definition"), Truncation::Right)
            .unwrap();
        assert_ne!(own.ids, short.ids);
        let huge = "instruct ".repeat(200);
        assert!(matches!(
            t.encode_query_ids_for("q", Some(&huge), Truncation::Right),
            Err(TokenizeError::PromptTooLong { limit: 160, .. })
        ));
        // An encoder refuses an instruction.
        assert!(matches!(
            default_model_tokenizer(64).encode_query_ids_for("q", Some("i"), Truncation::Right),
            Err(TokenizeError::NoInstructions)
        ));
    }

    /// A prompted model's windows: each is the whole prompt, a run of the
    /// document's tokens and the suffix, covering the document.
    #[test]
    fn a_prompted_models_windows_keep_the_prompt_and_cover_the_document() {
        let t = qwen_tokenizer(128);
        let suffix = t.prompt.as_ref().unwrap().suffix.clone();
        let query = t
            .encode_query_ids("what is a window", Truncation::Right)
            .unwrap();
        let doc = "the quick brown fox jumps over the lazy dog ".repeat(30);
        let doc_ids = t.plain_ids(&format!(" {doc}")).unwrap();
        let plan = WindowPlan {
            max_windows: 100,
            overlap: 4,
            doc_tokens: 0,
        };
        let windows = t.encode_windows(&query, &doc, plan).unwrap();
        assert!(windows.len() > 2);
        let mut covered = Vec::new();
        for w in &windows {
            assert!(w.ids.len() <= 128);
            assert_eq!(&w.ids[..query.ids.len()], &query.ids[..]);
            assert_eq!(&w.ids[w.ids.len() - suffix.len()..], &suffix[..]);
            let body = &w.ids[query.ids.len()..w.ids.len() - suffix.len()];
            assert_eq!(body, &doc_ids[w.tokens.clone()]);
            covered.push(w.tokens.clone());
        }
        assert_eq!(covered[0].start, 0);
        assert_eq!(covered.last().unwrap().end, doc_ids.len());
        assert_eq!(windows.last().unwrap().end as usize, doc.chars().count());
    }
}
