//! The prompt an LLM reranker scores: a template with the instruction, the
//! query and the document in it.
//!
//! Qwen3-Reranker's model card scores `prefix + "<Instruct>: {instruction}\n
//! <Query>: {query}\n<Document>: {document}" + suffix`; [`PromptTemplate`]
//! holds that whole text with three placeholders, so another reranker's
//! prompt is a setting, not code. The tokenizer cuts it at the document
//! (see [`PromptParts`]): everything before the document is the same for
//! every document of a request, tokenized once, and is the prefix the CPU
//! decoder computes once.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SpecError};

/// Qwen3-Reranker's prompt (its model card's `prefix`, formatted pair and
/// `suffix`, joined).
pub const QWEN3_RERANKER_TEMPLATE: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

/// Qwen3-Reranker's default instruction.
pub const QWEN3_RERANKER_INSTRUCTION: &str =
    "Given a web search query, retrieve relevant passages that answer the query";

/// A reranker's prompt with `{query}` and `{document}` (in that order, once
/// each) and optionally `{instruction}` before the document, and the
/// instruction a request that names none gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplate {
    text: String,
    instruction: String,
}

/// A template cut where the tokenizer cuts it, for one instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptParts<'a> {
    /// Everything before the query, the instruction filled in.
    pub before_query: String,
    /// Between the query and the document, without the whitespace that
    /// ends it (that whitespace leads the document: a byte-level BPE
    /// splits a text before a space, so the document's words tokenize as
    /// they do in the whole prompt).
    pub after_query: &'a str,
    /// The whitespace before the document.
    pub document_lead: &'a str,
    /// Everything after the document.
    pub suffix: &'a str,
}

impl PromptTemplate {
    /// Qwen3-Reranker's template and instruction.
    pub fn qwen3_reranker() -> Self {
        Self {
            text: QWEN3_RERANKER_TEMPLATE.into(),
            instruction: QWEN3_RERANKER_INSTRUCTION.into(),
        }
    }

    /// A template, checked: `{query}` then `{document}` once each, and
    /// `{instruction}` at most once, before the document.
    pub fn new(text: impl Into<String>, instruction: impl Into<String>) -> Result<Self> {
        let template = Self {
            text: text.into(),
            instruction: instruction.into(),
        };
        let err = |m: &str| Err(SpecError::PromptTemplate(m.into()));
        let count = |p: &str| template.text.matches(p).count();
        if count("{query}") != 1 || count("{document}") != 1 {
            return err("it must hold {query} and {document} once each");
        }
        if count("{instruction}") > 1 {
            return err("it may hold {instruction} at most once");
        }
        let at = |p: &str| template.text.find(p);
        if at("{query}") > at("{document}") {
            return err("{query} must come before {document}");
        }
        if at("{instruction}").is_some_and(|i| Some(i) > at("{document}")) {
            return err("{instruction} must come before {document}");
        }
        Ok(template)
    }

    /// The instruction a request that names none gets.
    pub fn default_instruction(&self) -> &str {
        &self.instruction
    }

    /// The whole template text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The template cut for `instruction` (the default where `None`).
    pub fn parts(&self, instruction: Option<&str>) -> PromptParts<'_> {
        let instruction = instruction.unwrap_or(&self.instruction);
        let (before, rest) = self.text.split_once("{query}").unwrap_or((&self.text, ""));
        let (between, suffix) = rest.split_once("{document}").unwrap_or((rest, ""));
        let after_query = between.trim_end();
        PromptParts {
            before_query: before.replace("{instruction}", instruction),
            after_query,
            document_lead: &between[after_query.len()..],
            suffix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3s_template_cuts_at_the_query_and_before_the_documents_space() {
        let t = PromptTemplate::qwen3_reranker();
        let p = t.parts(None);
        assert!(p.before_query.ends_with(&format!(
            "<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: "
        )));
        assert_eq!(p.after_query, "\n<Document>:");
        assert_eq!(p.document_lead, " ");
        assert!(p.suffix.starts_with("<|im_end|>\n<|im_start|>assistant"));
        let own = t.parts(Some("Find code"));
        assert!(own.before_query.contains("<Instruct>: Find code\n"));
        let whole = format!(
            "{}q{}{}d{}",
            p.before_query, p.after_query, p.document_lead, p.suffix
        );
        assert_eq!(
            whole,
            QWEN3_RERANKER_TEMPLATE
                .replace("{instruction}", QWEN3_RERANKER_INSTRUCTION)
                .replace("{query}", "q")
                .replace("{document}", "d")
        );
    }

    #[test]
    fn templates_without_their_placeholders_in_order_are_refused() {
        for bad in [
            "{query}",
            "{document} {query}",
            "{query} {document} {query}",
            "{query} {document} {instruction}",
            "{instruction}{instruction}{query}{document}",
        ] {
            assert!(PromptTemplate::new(bad, "i").is_err(), "{bad}");
        }
        let ok = PromptTemplate::new("Q: {query}\nD: {document}", "i").unwrap();
        assert_eq!(ok.parts(None).before_query, "Q: ");
    }
}
