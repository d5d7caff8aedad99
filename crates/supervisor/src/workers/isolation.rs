//! Poison isolation, one rule for both roles: work whose worker died
//! holding it is suspect. A suspect runs alone on a worker (a lease taken
//! with [`super::pool::Share::Alone`]), so that a second death blames it
//! and no bystander. Several suspects that died together are split in
//! halves that each run alone, so bystanders finish and the poison is
//! found in log2(n) deaths; a single suspect that kills its worker alone is
//! the poison and is refused.

/// What to do with the items a worker died holding.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterDeath<T> {
    /// Retry each group alone on a worker.
    RetryAlone(Vec<Vec<T>>),
    /// The item killed its worker while alone on it: refuse it.
    Refuse(T),
}

/// Decides for `held`, the items a worker died holding; `alone`: whether
/// they ran alone (as suspects already).
pub fn after_death<T>(mut held: Vec<T>, alone: bool) -> AfterDeath<T> {
    match held.len() {
        1 if alone => AfterDeath::Refuse(held.remove(0)),
        0 | 1 => AfterDeath::RetryAlone(vec![held]),
        n => {
            let second = held.split_off(n / 2);
            AfterDeath::RetryAlone(vec![held, second])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bystanders_are_split_off_and_a_lone_suspect_is_refused() {
        assert_eq!(
            after_death(vec![7], false),
            AfterDeath::RetryAlone(vec![vec![7]])
        );
        assert_eq!(after_death(vec![7], true), AfterDeath::Refuse(7));
        assert_eq!(
            after_death(vec![1, 2, 3, 4, 5], false),
            AfterDeath::RetryAlone(vec![vec![1, 2], vec![3, 4, 5]])
        );
        // A group that died alone is split again: halving finds the poison.
        let mut group = (0..16).collect::<Vec<_>>();
        let mut deaths = 1;
        loop {
            match after_death(group, true) {
                AfterDeath::Refuse(p) => {
                    assert_eq!(p, 11);
                    break;
                }
                AfterDeath::RetryAlone(parts) => {
                    group = parts.into_iter().find(|g| g.contains(&11)).unwrap();
                    deaths += 1;
                }
            }
        }
        assert_eq!(deaths, 5, "1 + log2(16) deaths");
    }
}
