//! Which queued pairs go into the next batch.
//!
//! The oldest pair always goes (so nothing starves); the rest are its
//! nearest neighbours by length, taken while the batch stays within the
//! token budget (real tokens, which is what the packed engine's linear
//! layers compute) and the pair limit. Similar lengths keep the padded
//! attention small. Only the first `window` pairs are considered, which
//! bounds the work per batch.

/// What one batch may hold: the scheduler's budget (the engine checks its
/// own limits, `ce_common::batch::BatchLimits`, on every batch it gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBudget {
    /// Sum of the pairs' tokens at most.
    pub max_tokens: usize,
    /// Pairs at most.
    pub max_pairs: usize,
}

/// Picks the next batch from a FIFO queue described by each pair's token
/// count. Returns queue positions in ascending order; empty only for an
/// empty queue. A pair longer than the budget is sent alone.
pub fn choose(lengths: &[usize], budget: BatchBudget, window: usize) -> Vec<usize> {
    let n = lengths.len().min(window.max(1));
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let p = order.iter().position(|&i| i == 0).unwrap_or(0);
    let target = lengths[0];
    let (mut lo, mut hi) = (p, p + 1); // order[lo..hi] is taken
    let mut tokens = target;
    let mut taken = vec![0usize];
    while taken.len() < budget.max_pairs.max(1) {
        let left = lo.checked_sub(1).map(|j| (j, lengths[order[j]]));
        let right = (hi < n).then(|| (hi, lengths[order[hi]]));
        let fits =
            |c: Option<(usize, usize)>| c.filter(|&(_, len)| tokens + len <= budget.max_tokens);
        let pick = match (fits(left), fits(right)) {
            (Some(l), Some(r)) => {
                if target - l.1 <= r.1 - target {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => break,
        };
        if pick.0 < lo {
            lo = pick.0;
        } else {
            hi = pick.0 + 1;
        }
        tokens += pick.1;
        taken.push(order[pick.0]);
    }
    taken.sort_unstable();
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: BatchBudget = BatchBudget {
        max_tokens: 100,
        max_pairs: 4,
    };

    #[test]
    fn oldest_always_goes_with_its_nearest_lengths() {
        let lengths = [50, 10, 48, 90, 52, 11];
        let b = choose(
            &lengths,
            BatchBudget {
                max_tokens: 1000,
                max_pairs: 3,
            },
            64,
        );
        assert_eq!(b, vec![0, 2, 4]);
    }

    #[test]
    fn budget_and_pair_limit_hold() {
        let lengths = [30, 30, 30, 30, 30];
        let b = choose(&lengths, L, 64);
        assert_eq!(b.len(), 3, "3 × 30 fits in 100, 4 × 30 does not");
        let lengths = [1; 10];
        assert_eq!(choose(&lengths, L, 64).len(), 4);
    }

    #[test]
    fn an_oversized_pair_goes_alone_and_the_queue_drains() {
        assert_eq!(choose(&[500, 1, 1], L, 64), vec![0]);
        assert!(choose(&[], L, 64).is_empty());
        // Every pair is eventually the oldest, so repeated batching empties any queue.
        let mut queue: Vec<usize> = (0..200).map(|i| (i * 37) % 120 + 1).collect();
        let mut batches = 0;
        while !queue.is_empty() {
            let b = choose(&queue, L, 16);
            assert!(!b.is_empty() && b[0] == 0);
            let tokens: usize = b.iter().map(|&i| queue[i]).sum();
            assert!(b.len() == 1 || tokens <= L.max_tokens);
            for &i in b.iter().rev() {
                queue.remove(i);
            }
            batches += 1;
        }
        assert!(batches < 200);
    }
}
