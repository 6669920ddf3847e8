//! Prompts (METHOD §2): the template from the config with the context's token ids in the `{context}`
//! slot. The context goes in as ids, not text, so a left cut inside a multi-byte character, or a
//! context ending mid-character, is passed to the model exactly as the corpus tokenized it.

use crate::model::Tokenizer;

/// A tokenized template: `prefix ++ context ++ suffix`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    prefix: Vec<u32>,
    suffix: Vec<u32>,
}

impl Prompt {
    /// `template` must contain `{context}` (the config validates this).
    pub fn new(template: &str, tok: &Tokenizer) -> crate::model::Result<Self> {
        let (pre, post) = template.split_once("{context}").unwrap_or((template, ""));
        Ok(Prompt {
            prefix: tok.encode(pre)?,
            suffix: tok.encode(post)?,
        })
    }

    pub fn build(&self, context: &[u32]) -> Vec<u32> {
        let mut ids = Vec::with_capacity(self.prefix.len() + context.len() + self.suffix.len());
        ids.extend_from_slice(&self.prefix);
        ids.extend_from_slice(context);
        ids.extend_from_slice(&self.suffix);
        ids
    }

    /// Tokens the template adds around the context.
    pub fn overhead(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }
}
