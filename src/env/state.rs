//! States of METHOD §1: a (document, position) pair with its context, the true continuation's bytes and
//! valid boundaries, and the next token. Everything is compared as bytes: byte-level BPE tokens need not
//! end on UTF-8 character boundaries.

use super::TeacherThought;
use crate::model::Tokenizer;

/// A document tokenized once: ids and each token's start offset in `bytes`.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedDoc {
    pub doc: usize,
    pub ids: Vec<u32>,
    /// `offsets[i]` is the byte offset of token i; `offsets[len]` is the end.
    pub offsets: Vec<usize>,
    pub bytes: Vec<u8>,
    /// Worked thoughts the corpus offers for spans of this document (byte offsets into `bytes`).
    pub thoughts: Vec<TeacherThought>,
}

impl TokenizedDoc {
    pub fn new(doc: usize, text: &str, tok: &Tokenizer) -> crate::model::Result<Self> {
        let ids = tok.encode(text)?;
        Ok(Self::from_ids(doc, ids, tok))
    }

    pub fn from_ids(doc: usize, ids: Vec<u32>, tok: &Tokenizer) -> Self {
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut bytes = Vec::new();
        for &id in &ids {
            offsets.push(bytes.len());
            bytes.extend_from_slice(tok.bytes(id));
        }
        offsets.push(bytes.len());
        TokenizedDoc {
            doc,
            ids,
            offsets,
            bytes,
            thoughts: vec![],
        }
    }

    /// The document with the teacher thoughts its corpus offers.
    pub fn with_thoughts(mut self, thoughts: Vec<TeacherThought>) -> Self {
        self.thoughts = thoughts;
        self
    }

    /// The teacher thought for position `t`, if its token starts inside a thought's span that ends on
    /// a token boundary: the thought's text and the position `k > t` where the span ends, so that
    /// `ids[t..k]` is what the thought's answer writes.
    pub fn teacher_at(&self, t: usize) -> Option<(&str, usize)> {
        let at = *self.offsets.get(t)?;
        if t >= self.ids.len() {
            return None;
        }
        let th = self
            .thoughts
            .iter()
            .find(|th| th.start <= at && at < th.end)?;
        let k = self.offsets.binary_search(&th.end).ok()?;
        Some((th.text.as_str(), k))
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One RL state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct State {
    pub doc: usize,
    /// Position t of the next token in the document.
    pub pos: usize,
    /// Ids of `x_<t`, cut on the left to `max_context_tokens` at a token boundary that is also a UTF-8
    /// character boundary of the document.
    pub context: Vec<u32>,
    /// Bytes of `x_≥t`, at most `max_target_bytes` (whole tokens only, at least the first token).
    pub continuation: Vec<u8>,
    /// Valid boundaries `L_gt`: cumulative byte lengths of `x_t, x_t+1, …` within the window.
    pub boundaries: Vec<usize>,
    /// `x_t`.
    pub next_token: u32,
}

/// Continuation window of `ids` (the tokens from position t on): bytes of whole tokens up to
/// `max_bytes`, and their cumulative lengths. The first token is always included, even when longer.
pub fn continuation_window(
    tok: &Tokenizer,
    ids: &[u32],
    max_bytes: usize,
) -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut boundaries = Vec::new();
    for &id in ids {
        let b = tok.bytes(id);
        if !boundaries.is_empty() && bytes.len() + b.len() > max_bytes {
            break;
        }
        bytes.extend_from_slice(b);
        boundaries.push(bytes.len());
    }
    (bytes, boundaries)
}

/// The state at position `t` of `doc` (1 ≤ t < len: a state needs a context and a next token).
pub fn make_state(
    doc: &TokenizedDoc,
    t: usize,
    tok: &Tokenizer,
    max_context_tokens: usize,
    max_target_bytes: usize,
) -> Option<State> {
    if t == 0 || t >= doc.len() || max_context_tokens == 0 {
        return None;
    }
    let mut start = t.saturating_sub(max_context_tokens);
    // A left cut must not start inside a UTF-8 character: skip continuation bytes (0b10xxxxxx).
    while start < t
        && doc
            .bytes
            .get(doc.offsets[start])
            .is_some_and(|&b| b & 0xC0 == 0x80)
    {
        start += 1;
    }
    if start == t {
        return None;
    }
    let (continuation, boundaries) = continuation_window(tok, &doc.ids[t..], max_target_bytes);
    Some(State {
        doc: doc.doc,
        pos: t,
        context: doc.ids[start..t].to_vec(),
        continuation,
        boundaries,
        next_token: doc.ids[t],
    })
}
