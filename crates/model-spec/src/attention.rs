//! How sequences are laid out for attention.

use crate::error::SpecError;

/// How sequences are laid out for attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttentionLayout {
    /// Sorted by length and cut into groups of close lengths (the default).
    #[default]
    Grouped,
    /// One block, every sequence padded to the batch's longest, in batch
    /// order: attention as an engine without length grouping computes it
    /// (for the padding experiment; linear layers stay packed).
    Single,
    /// Everything padded: every sequence is padded to the batch's longest
    /// before the embeddings, so linear layers, norms and attention all run
    /// on `[pairs × longest, H]`. What a classic padded BERT computes; the
    /// padding experiment's baseline.
    Padded,
}

impl std::str::FromStr for AttentionLayout {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "grouped" | "" => Ok(Self::Grouped),
            "single" => Ok(Self::Single),
            "padded" => Ok(Self::Padded),
            other => Err(SpecError::UnknownAttention(other.to_string())),
        }
    }
}

impl std::fmt::Display for AttentionLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grouped => "grouped",
            Self::Single => "single",
            Self::Padded => "padded",
        })
    }
}

crate::serde_as_name!(AttentionLayout);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for a in [
            AttentionLayout::Grouped,
            AttentionLayout::Single,
            AttentionLayout::Padded,
        ] {
            assert_eq!(a.to_string().parse::<AttentionLayout>().unwrap(), a);
        }
        let e = "diagonal".parse::<AttentionLayout>().unwrap_err();
        assert!(e.to_string().contains("diagonal"), "{e}");
    }
}
