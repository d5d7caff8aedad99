//! Long documents: a document that does not fit beside the query is split
//! into overlapping windows by the tokenizer (see
//! `tokenizer_worker::PairTokenizer::encode_windows`), every window is
//! scored as a pair in the ordinary batches, and here the windows' scores
//! become the document's.

use serde::{Deserialize, Serialize};

/// How a document's window scores become its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Aggregation {
    /// The best window's (the default: a document is as relevant as its
    /// most relevant passage, as the hosted Cohere API scores it).
    #[default]
    Max,
    /// The first window's (the document's opening, as truncation would).
    First,
    /// The mean of the best `chunk_top_k` windows (rewards documents
    /// relevant throughout over one lucky window).
    MeanTopK,
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Self::Max),
            "first" => Ok(Self::First),
            "mean_top_k" => Ok(Self::MeanTopK),
            other => Err(format!(
                "unknown chunk aggregation {other:?}: max, first or mean_top_k"
            )),
        }
    }
}

impl std::fmt::Display for Aggregation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Max => "max",
            Self::First => "first",
            Self::MeanTopK => "mean_top_k",
        })
    }
}

impl Serialize for Aggregation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Aggregation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Where one scored pair of a windowed request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowOrigin {
    /// The request's document.
    pub document: usize,
    /// Character offset of the window's start in the document.
    pub start: u32,
    /// Character offset just past its end.
    pub end: u32,
}

/// A document's score from its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DocumentScore {
    /// The score.
    pub score: f32,
    /// The characters of the window that decided it (for `mean_top_k`, the
    /// best of those averaged).
    pub window: (u32, u32),
    /// Windows the document was scored in.
    pub windows: usize,
}

/// Each of `documents` documents' score from the scores of its rows
/// (`scores[i]` is row `rows[i]`'s). A document without rows scores NaN.
pub fn aggregate(
    scores: &[f32],
    rows: &[RowOrigin],
    documents: usize,
    how: Aggregation,
    top_k: usize,
) -> Vec<DocumentScore> {
    let mut by_document: Vec<Vec<(f32, (u32, u32))>> = vec![Vec::new(); documents];
    for (score, row) in scores.iter().zip(rows) {
        if let Some(windows) = by_document.get_mut(row.document) {
            windows.push((*score, (row.start, row.end)));
        }
    }
    by_document
        .into_iter()
        .map(|windows| {
            let n = windows.len();
            let Some(&first) = windows.first() else {
                return DocumentScore {
                    score: f32::NAN,
                    window: (0, 0),
                    windows: 0,
                };
            };
            // Best first; ties keep the earlier window.
            let mut ranked = windows;
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            let (score, window) = match how {
                Aggregation::First => first,
                Aggregation::Max => ranked[0],
                Aggregation::MeanTopK => {
                    let k = top_k.clamp(1, n);
                    let mean = ranked[..k].iter().map(|w| w.0).sum::<f32>() / k as f32;
                    (mean, ranked[0].1)
                }
            };
            DocumentScore {
                score,
                window,
                windows: n,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(document: usize, start: u32) -> RowOrigin {
        RowOrigin {
            document,
            start,
            end: start + 10,
        }
    }

    #[test]
    fn windows_become_one_score_per_document() {
        let rows = [
            row(0, 0),
            row(0, 8),
            row(0, 16),
            row(1, 0),
            row(2, 0),
            row(2, 8),
        ];
        let scores = [0.2, 0.9, 0.4, 0.5, 0.3, 0.3];
        let max = aggregate(&scores, &rows, 4, Aggregation::Max, 2);
        assert_eq!(
            max.iter()
                .map(|d| (d.score, d.window.0, d.windows))
                .take(3)
                .collect::<Vec<_>>(),
            [(0.9, 8, 3), (0.5, 0, 1), (0.3, 0, 2)],
            "the best window, the earlier on a tie"
        );
        assert!(max[3].score.is_nan() && max[3].windows == 0);
        let first = aggregate(&scores, &rows, 3, Aggregation::First, 2);
        assert_eq!(first[0].score, 0.2);
        assert_eq!(first[0].window, (0, 10));
        let mean = aggregate(&scores, &rows, 3, Aggregation::MeanTopK, 2);
        assert!((mean[0].score - 0.65).abs() < 1e-6 && mean[0].window == (8, 18));
        assert_eq!(mean[1].score, 0.5, "k is capped by the windows there are");
    }

    #[test]
    fn names_parse_and_print_alike() {
        for a in [Aggregation::Max, Aggregation::First, Aggregation::MeanTopK] {
            assert_eq!(a.to_string().parse::<Aggregation>(), Ok(a));
        }
        assert!(
            "median"
                .parse::<Aggregation>()
                .unwrap_err()
                .contains("mean_top_k")
        );
    }
}
