//! How far a reduced precision's scores are from f32's: the largest
//! absolute difference, Kendall's τ of the rankings they induce, and the
//! overlap of their top k (what a reranker's client keeps), the figures
//! every precision reports beside its speed.

/// Kendall's τ-b between two score lists over the same items: 1 when they
/// order every pair alike, -1 when they order every pair oppositely; ties
/// (in either list) are accounted for as τ-b does. `None` for fewer than
/// two items, lists of unequal length, or a list that ties everything.
pub fn kendall_tau(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let (mut concordant, mut discordant) = (0i64, 0i64);
    let (mut ties_a, mut ties_b) = (0i64, 0i64);
    for i in 0..a.len() {
        for j in i + 1..a.len() {
            let da = (a[i] - a[j]).partial_cmp(&0.0)?;
            let db = (b[i] - b[j]).partial_cmp(&0.0)?;
            use std::cmp::Ordering::Equal;
            match (da, db) {
                (Equal, Equal) => {}
                (Equal, _) => ties_a += 1,
                (_, Equal) => ties_b += 1,
                _ if da == db => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n_a = (concordant + discordant + ties_a) as f64;
    let n_b = (concordant + discordant + ties_b) as f64;
    let denominator = (n_a * n_b).sqrt();
    (denominator > 0.0).then(|| (concordant - discordant) as f64 / denominator)
}

/// The share of `b`'s `k` best items that are among `a`'s `k` best (1: the
/// same top k, in any order), `k` capped at the list's length. An item tied
/// with the k-th best counts as inside, so ties cannot make a miss. `None`
/// for `k = 0`, empty or unequal lists, or a NaN score.
pub fn top_k_overlap(a: &[f32], b: &[f32], k: usize) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() || k == 0 || a.iter().chain(b).any(|s| s.is_nan()) {
        return None;
    }
    let k = k.min(a.len());
    // The k-th best score of a list: anything at least as good is "in".
    let kth = |scores: &[f32]| {
        let mut sorted = scores.to_vec();
        sorted.sort_by(|x, y| y.total_cmp(x));
        sorted[k - 1]
    };
    let mut best_b: Vec<usize> = (0..b.len()).collect();
    best_b.sort_by(|&x, &y| b[y].total_cmp(&b[x]));
    let threshold = kth(a);
    let kept = best_b[..k].iter().filter(|&&i| a[i] >= threshold).count();
    Some(kept as f64 / k as f64)
}

/// The largest `|a[i] - b[i]|` (NaN if any difference is NaN).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_overlap_counts_the_shared_best_items() {
        let reference = [0.9, 0.1, 0.8, 0.3, 0.7, 0.2];
        assert_eq!(top_k_overlap(&reference, &reference, 3), Some(1.0));
        // The best three are 0, 2, 4; here 0, 2, 3.
        let other = [0.9, 0.1, 0.8, 0.75, 0.7, 0.2];
        let got = top_k_overlap(&other, &reference, 3).unwrap();
        assert!((got - 2.0 / 3.0).abs() < 1e-12, "{got}");
        // Order inside the top k does not matter; k past the length is all.
        let reordered = [0.7, 0.1, 0.8, 0.3, 0.9, 0.2];
        assert_eq!(top_k_overlap(&reordered, &reference, 3), Some(1.0));
        assert_eq!(top_k_overlap(&other, &reference, 10), Some(1.0));
        // A tie at the k-th place is not a miss.
        let tied = [0.9, 0.1, 0.7, 0.3, 0.7, 0.2];
        assert_eq!(top_k_overlap(&tied, &reference, 3), Some(1.0));
        assert_eq!(top_k_overlap(&reference, &reference, 0), None);
        assert_eq!(top_k_overlap(&reference[..2], &reference, 1), None);
        assert_eq!(top_k_overlap(&[f32::NAN, 1.0], &[0.0, 1.0], 1), None);
    }

    #[test]
    fn tau_counts_concordant_and_discordant_pairs() {
        assert_eq!(
            kendall_tau(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]),
            Some(1.0)
        );
        assert_eq!(kendall_tau(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // One swap of four: 5 concordant, 1 discordant.
        let tau = kendall_tau(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]).unwrap();
        assert!((tau - 4.0 / 6.0).abs() < 1e-12, "{tau}");
        // τ-b with a tie: (2 - 0) / sqrt(3 · 2).
        let tau = kendall_tau(&[1.0, 2.0, 3.0], &[1.0, 1.0, 2.0]).unwrap();
        assert!((tau - 2.0 / 6f64.sqrt()).abs() < 1e-12, "{tau}");
        assert_eq!(kendall_tau(&[1.0], &[1.0]), None);
        assert_eq!(kendall_tau(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(kendall_tau(&[1.0, f32::NAN], &[1.0, 2.0]), None);
    }

    #[test]
    fn max_abs_diff_is_the_worst_element() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.5, 1.0]), 1.0);
        assert!(max_abs_diff(&[f32::NAN], &[0.0]).is_nan());
    }
}
