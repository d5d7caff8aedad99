//! The library's BERT normalizer and pre-tokenizer with the same results
//! and cheaper character tests.
//!
//! Profiling a tokenizer worker on the standard workload put ~85% of its
//! time in the BERT normalizer and pre-tokenizer, a third of it in
//! `unicode_categories`' binary searches: for every character of every
//! text, the library asks which Unicode category it is in (to drop
//! control characters and accents and to find punctuation), although an
//! ASCII character's answer is a table lookup. The two wrappers here give
//! those questions their ASCII answers and hand everything else to the
//! library:
//!
//! * [`Normalizer`]: a BERT normalizer on an all-ASCII text drops the
//!   control characters, turns the remaining whitespace into spaces and
//!   lowercases — what the library's steps come to on ASCII (no Chinese
//!   characters, and NFD and accent stripping change nothing) — and skips
//!   each step that has nothing to change. Any other text, and any other
//!   normalizer, is the library's.
//! * [`PreTokenizer`]: the BERT pre-tokenizer's two splits (whitespace
//!   removed, punctuation isolated), with punctuation tested by
//!   `is_ascii_punctuation` for ASCII characters (every ASCII character in a
//!   Unicode punctuation category is ASCII punctuation, so the library's
//!   `is_ascii_punctuation() || is_punctuation()` is that alone there).
//!
//! A test compares ids, word ids and offsets with the library's on mixed
//! ASCII and Unicode text with controls, accents and punctuation.

use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizedString, PostProcessorWrapper, PreTokenizedString,
    SplitDelimiterBehavior, Tokenizer, TokenizerImpl,
};
use unicode_categories::UnicodeCategories;

/// A loaded tokenizer with the cheaper BERT steps.
pub(crate) type FastTokenizer =
    TokenizerImpl<ModelWrapper, Normalizer, PreTokenizer, PostProcessorWrapper, DecoderWrapper>;

/// `base` with its normalizer and pre-tokenizer wrapped; everything else
/// (model, added tokens, post-processor, truncation, padding) as it was.
pub(crate) fn fast(base: &Tokenizer) -> FastTokenizer {
    let mut fast = TokenizerImpl::new(base.get_model().clone());
    fast.with_added_vocabulary(base.get_added_vocabulary().clone());
    fast.with_pre_tokenizer(base.get_pre_tokenizer().cloned().map(PreTokenizer));
    fast.with_post_processor(base.get_post_processor().cloned());
    fast.with_decoder(base.get_decoder().cloned());
    fast.with_padding(base.get_padding().cloned());
    // The library's own normalizer and truncation were accepted by the
    // library once already; setting them again cannot fail.
    let _ = fast.with_normalizer(base.get_normalizer().cloned().map(Normalizer));
    let _ = fast.with_truncation(base.get_truncation().cloned());
    fast
}

/// The library's normalizer, BERT's with an ASCII path.
#[derive(Debug, Clone)]
pub(crate) struct Normalizer(NormalizerWrapper);

impl tokenizers::Normalizer for Normalizer {
    fn normalize(&self, normalized: &mut NormalizedString) -> tokenizers::Result<()> {
        let NormalizerWrapper::BertNormalizer(bert) = &self.0 else {
            return self.0.normalize(normalized);
        };
        if !normalized.get().is_ascii() {
            return self.0.normalize(normalized);
        }
        let bytes = normalized.get().as_bytes();
        // The library's `is_control` is Unicode's "other" categories minus
        // tab, newline and return: on ASCII, the C0 controls and DEL.
        let control = |b: u8| b.is_ascii_control() && !matches!(b, b'\t' | b'\n' | b'\r');
        let (has_control, has_other_space, has_upper) =
            bytes.iter().fold((false, false, false), |(c, s, u), &b| {
                (
                    c || control(b),
                    s || matches!(b, b'\t' | b'\n' | b'\r'),
                    u || b.is_ascii_uppercase(),
                )
            });
        if bert.clean_text {
            if has_control {
                normalized.filter(|c| !c.is_ascii_control() || matches!(c, '\t' | '\n' | '\r'));
            }
            // Of ASCII whitespace only tab, newline and return outlive the
            // filter (vertical tab and form feed are controls).
            if has_other_space {
                normalized.map(|c| if c.is_whitespace() { ' ' } else { c });
            }
        }
        // Chinese characters, NFD and accents: nothing to do in ASCII.
        if bert.lowercase && has_upper {
            normalized.map(|c| c.to_ascii_lowercase());
        }
        Ok(())
    }
}

/// The library's pre-tokenizer, BERT's with an ASCII punctuation test.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer(PreTokenizerWrapper);

/// BERT's punctuation: `is_ascii_punctuation() || is_punctuation()`,
/// answered without a table search for ASCII.
fn is_bert_punctuation(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation()
    } else {
        c.is_punctuation()
    }
}

impl tokenizers::PreTokenizer for PreTokenizer {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        let PreTokenizerWrapper::BertPreTokenizer(_) = &self.0 else {
            return self.0.pre_tokenize(pretokenized);
        };
        pretokenized.split(|_, s| s.split(char::is_whitespace, SplitDelimiterBehavior::Removed))?;
        pretokenized.split(|_, s| s.split(is_bert_punctuation, SplitDelimiterBehavior::Isolated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Texts of ASCII words, punctuation, every ASCII control, accented and
    /// CJK letters, Unicode punctuation and spaces, in random mixes (half of
    /// them pure ASCII).
    fn texts(count: usize) -> Vec<String> {
        const ASCII: &[&str] = &[
            "The", "quick", "BROWN", "fox", "don't", "e-mail", "U.S.A.", "$5", "100%", "a+b=c",
            "(x)", "[CLS]", "[SEP]", "[MASK]", "#tag", "@you", "~/path", "x_y", "`q`", "{}", "|",
            "^", "<b>",
        ];
        const UNICODE: &[&str] = &[
            "café",
            "naïve",
            "Ärger",
            "東京",
            "日本語",
            "«quote»",
            "—dash—",
            "¿qué?",
            "emoji😀",
            "\u{00a0}",
            "\u{3000}",
            "\u{200b}",
            "\u{fffd}",
            "x\u{0301}",
            "İstanbul",
            "ß",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        (0..count)
            .map(|i| {
                let ascii_only = i % 2 == 0;
                let mut text = String::new();
                for _ in 0..rng.random_range(0..40) {
                    match rng.random_range(0..10) {
                        0 => text.push(char::from(rng.random_range(0u8..0x20))),
                        1 => text.push('\u{7f}'),
                        2 if !ascii_only => {
                            text.push_str(UNICODE[rng.random_range(0..UNICODE.len())])
                        }
                        3 => text.push_str(
                            ["\t", "\n", "\r", "  ", "\x0b", "\x0c"][rng.random_range(0..6)],
                        ),
                        _ => text.push_str(ASCII[rng.random_range(0..ASCII.len())]),
                    }
                    if rng.random_bool(0.7) {
                        text.push(' ');
                    }
                }
                text
            })
            .collect()
    }

    fn tokenizer(relative: &str) -> Tokenizer {
        let path = format!("{}/../../{relative}", env!("CARGO_MANIFEST_DIR"));
        Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_fast_steps_tokenize_as_the_library_does() {
        let mut files = vec!["models/minilm-l6-ce/tokenizer.json".to_string()];
        let fixtures = format!(
            "{}/../../tests/fixtures/families",
            env!("CARGO_MANIFEST_DIR")
        );
        if let Ok(dirs) = std::fs::read_dir(&fixtures) {
            for dir in dirs.flatten() {
                let file = dir.path().join("tokenizer.json");
                if file.exists() {
                    files.push(
                        file.to_string_lossy()
                            .replace(&format!("{}/../../", env!("CARGO_MANIFEST_DIR")), ""),
                    );
                }
            }
        }
        assert!(
            files.len() > 1,
            "the family fixtures were not found in {fixtures}"
        );
        let texts = texts(3000);
        for file in &files {
            let library = tokenizer(file);
            let ours = fast(&library);
            for (i, text) in texts.iter().enumerate() {
                let pair = (text.as_str(), texts[(i + 1) % texts.len()].as_str());
                let (a, b) = (
                    library.encode(pair, true).unwrap(),
                    ours.encode(pair, true).unwrap(),
                );
                assert_eq!(a.get_ids(), b.get_ids(), "{file}: {text:?}");
                assert_eq!(a.get_type_ids(), b.get_type_ids(), "{file}: {text:?}");
                assert_eq!(a.get_word_ids(), b.get_word_ids(), "{file}: {text:?}");
                assert_eq!(a.get_offsets(), b.get_offsets(), "{file}: {text:?}");
                let (a, b) = (
                    library.encode_char_offsets(text.as_str(), false).unwrap(),
                    ours.encode_char_offsets(text.as_str(), false).unwrap(),
                );
                assert_eq!(a.get_offsets(), b.get_offsets(), "{file}: {text:?}");
            }
        }
    }
}
