//! The standard synthetic workload, shared by the engine benchmark and the
//! load generator so that both measure the same text.
//!
//! A request is one query of 4–12 words and `passages` passages whose lengths
//! in words follow a log-normal distribution (median 50, clipped to
//! [10, 200]). Words come from the committed English word lists in `data/`,
//! mostly common words with some rarer ones, in sentences with punctuation,
//! so that a passage tokenizes like prose: about 85 tokens per pair on the
//! default model. Everything is a pure function of the seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal};

static COMMON_WORDS: &str = include_str!("../data/words_common.txt");
static RARE_WORDS: &str = include_str!("../data/words_rare.txt");

/// Shape of the generated text.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadConfig {
    /// Seed: the same seed gives the same requests.
    pub seed: u64,
    /// Passages per request (the seed's batch sizes were 32, 64 and 128).
    pub passages: usize,
    /// Query length in words, inclusive range.
    pub query_words: (usize, usize),
    /// Median passage length in words.
    pub median_passage_words: f64,
    /// Log-normal shape parameter of passage lengths.
    pub passage_sigma: f64,
    /// Passage lengths are clipped to this inclusive range of words.
    pub passage_words: (usize, usize),
    /// Share of words drawn from the rare list.
    pub rare_word_share: f64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            passages: 128,
            query_words: (4, 12),
            median_passage_words: 50.0,
            passage_sigma: 0.5,
            passage_words: (10, 200),
            rare_word_share: 0.12,
        }
    }
}

/// One rerank request: a query and its passages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The query.
    pub query: String,
    /// The passages to score against it.
    pub passages: Vec<String>,
}

impl Request {
    /// As a gRPC `Rerank` request (defaults otherwise).
    pub fn to_rerank(&self) -> ce_proto::v1::RerankRequest {
        ce_proto::v1::RerankRequest {
            query: self.query.clone(),
            documents: self.passages.clone(),
            ..Default::default()
        }
    }
}

/// An endless, deterministic stream of [`Request`]s.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    rng: StdRng,
    lengths: LogNormal<f64>,
    common: Vec<&'static str>,
    rare: Vec<&'static str>,
}

impl Workload {
    /// A workload for `config`.
    ///
    /// # Panics
    /// If the configuration is degenerate (zero median, negative sigma, empty
    /// or inverted ranges): these are constants of the caller, not input.
    pub fn new(config: WorkloadConfig) -> Self {
        assert!(config.query_words.0 >= 1 && config.query_words.0 <= config.query_words.1);
        assert!(config.passage_words.0 >= 1 && config.passage_words.0 <= config.passage_words.1);
        let lengths = LogNormal::new(config.median_passage_words.ln(), config.passage_sigma)
            .expect("median > 0 and sigma >= 0");
        Self {
            rng: StdRng::seed_from_u64(config.seed),
            lengths,
            common: COMMON_WORDS.lines().filter(|w| !w.is_empty()).collect(),
            rare: RARE_WORDS.lines().filter(|w| !w.is_empty()).collect(),
            config,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &WorkloadConfig {
        &self.config
    }

    /// The next request.
    pub fn next_request(&mut self) -> Request {
        let (lo, hi) = self.config.query_words;
        let query_len = self.rng.random_range(lo..=hi);
        let query = self.words(query_len, false);
        let passages = (0..self.config.passages)
            .map(|_| {
                let (lo, hi) = self.config.passage_words;
                let n = (self.lengths.sample(&mut self.rng).round() as usize).clamp(lo, hi);
                self.words(n, true)
            })
            .collect();
        Request { query, passages }
    }

    /// `n` words; as sentences (capitalised, commas, full stops) when `prose`.
    fn words(&mut self, n: usize, prose: bool) -> String {
        let mut out = String::with_capacity(n * 8);
        let mut sentence_left = 0usize;
        for i in 0..n {
            let word = if self.rng.random_bool(self.config.rare_word_share) {
                self.rare[self.rng.random_range(0..self.rare.len())]
            } else {
                self.common[self.rng.random_range(0..self.common.len())]
            };
            if i > 0 {
                out.push(' ');
            }
            if prose && sentence_left == 0 {
                sentence_left = self.rng.random_range(6..=20);
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    out.extend(first.to_uppercase());
                    out.push_str(chars.as_str());
                }
            } else {
                out.push_str(word);
            }
            if prose {
                sentence_left -= 1;
                if sentence_left == 0 || i + 1 == n {
                    out.push('.');
                    sentence_left = 0;
                } else if self.rng.random_bool(0.07) {
                    out.push(',');
                }
            }
        }
        out
    }
}

/// One line of a pairs file.
#[derive(Debug, serde::Deserialize)]
struct PairLine {
    query: String,
    #[serde(alias = "document", alias = "text")]
    passage: String,
}

/// Requests from a JSON-lines file of pairs, one
/// `{"query": …, "passage": …}` per line (`document` or `text` work for
/// the passage; blank lines are skipped). Consecutive lines with the same
/// query form one request, cut at `passages` pairs; the file's order is
/// kept. Errors name the line.
pub fn requests_from_pairs(text: &str, passages: usize) -> Result<Vec<Request>, String> {
    let passages = passages.max(1);
    let mut requests: Vec<Request> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: PairLine =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        match requests.last_mut() {
            Some(r) if r.query == pair.query && r.passages.len() < passages => {
                r.passages.push(pair.passage)
            }
            _ => requests.push(Request {
                query: pair.query,
                passages: vec![pair.passage],
            }),
        }
    }
    if requests.is_empty() {
        return Err("no pairs in the file".into());
    }
    Ok(requests)
}

impl Iterator for Workload {
    type Item = Request;

    fn next(&mut self) -> Option<Request> {
        Some(self.next_request())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_requests() {
        let a: Vec<Request> = Workload::new(WorkloadConfig::default()).take(2).collect();
        let b: Vec<Request> = Workload::new(WorkloadConfig::default()).take(2).collect();
        assert_eq!(a, b);
        let c = Workload::new(WorkloadConfig {
            seed: 7,
            ..Default::default()
        })
        .next_request();
        assert_ne!(a[0], c);
    }

    #[test]
    fn a_pairs_file_groups_consecutive_queries_and_names_bad_lines() {
        let text = r#"{"query": "a", "passage": "1"}
{"query": "a", "document": "2"}

{"query": "a", "text": "3"}
{"query": "b", "passage": "4"}
{"query": "a", "passage": "5"}
"#;
        let r = requests_from_pairs(text, 2).unwrap();
        let shape: Vec<(&str, usize)> = r
            .iter()
            .map(|r| (r.query.as_str(), r.passages.len()))
            .collect();
        assert_eq!(shape, [("a", 2), ("a", 1), ("b", 1), ("a", 1)]);
        assert_eq!(r[1].passages, ["3"]);
        let e = requests_from_pairs(
            "{\"query\": \"a\", \"passage\": \"1\"}\n{\"query\": 1}\n",
            8,
        )
        .unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(requests_from_pairs("\n\n", 8).is_err());
    }

    #[test]
    fn lengths_follow_the_config() {
        let mut w = Workload::new(WorkloadConfig::default());
        let mut lens = Vec::new();
        for r in w.by_ref().take(8) {
            assert_eq!(r.passages.len(), 128);
            let q = r.query.split_whitespace().count();
            assert!((4..=12).contains(&q), "{q}");
            for p in &r.passages {
                let n = p.split_whitespace().count();
                assert!((10..=200).contains(&n), "{n}");
                lens.push(n);
            }
        }
        lens.sort_unstable();
        let median = lens[lens.len() / 2];
        assert!((44..=56).contains(&median), "median {median}");
    }
}
