//! The rows the bootstrap trains on (`bootstrap.rs`): next-token pre-training windows, some with a
//! generic thought inserted, and the answer-format warm-up examples
//! `CONTEXT<think>THOUGHT</think>\boxed{ANSWER}` (the two kinds of thought are described in
//! `bootstrap.rs`'s module doc).

use crate::config::Config;
use crate::env::{TokenizedDoc, make_state};
use crate::model::{Rng, Tokenizer};
use crate::prompt::Prompt;

/// A random window of `len + 1` tokens from a random training document.
pub(super) fn lm_window(docs: &[TokenizedDoc], len: usize, rng: &mut Rng) -> Vec<u32> {
    let d = &docs[rng.below(docs.len())];
    if d.len() <= len + 1 {
        return d.ids.clone();
    }
    let start = rng.below(d.len() - len - 1);
    d.ids[start..start + len + 1].to_vec()
}

/// Pre-training windows, a share `b.pretrain_thought_share` of them with a generic thought inserted
/// at a random place (see [`insert_thought`]): (rows, the token of each left out of the loss).
pub(super) fn lm_windows(
    docs: &[TokenizedDoc],
    cfg: &Config,
    think: u32,
    rng: &mut Rng,
) -> (Vec<Vec<u32>>, Vec<Option<usize>>) {
    let b = &cfg.bootstrap;
    (0..b.batch)
        .map(|_| {
            let mut row = lm_window(docs, b.seq_len, rng);
            let skip =
                if b.pretrain_thought_share > 0.0 && rng.next_f64() < b.pretrain_thought_share {
                    insert_thought(&mut row, think, rng)
                } else {
                    None
                };
            (row, skip)
        })
        .unzip()
}

/// Inserts `<think>` and a copy of the token before it at a random place of `row`, so that the text
/// then goes on after the copy: `… a b <think> b c …`. Returns the index of `<think>`, which is not
/// scored (nothing in the text predicts where it goes); every token after it is, so the model learns
/// from whole documents to continue a text through the generic thought's re-read token.
pub fn insert_thought(row: &mut Vec<u32>, think: u32, rng: &mut Rng) -> Option<usize> {
    if row.len() < 3 {
        return None;
    }
    let at = 1 + rng.below(row.len() - 2);
    let copied = row[at - 1];
    row.splice(at..at, [think, copied]);
    Some(at)
}

/// One warm-up example at position `t`: (row ids, index where the completion starts). With `teach`,
/// the thought is the teacher's where `doc` offers one for `t`; otherwise the generic one (see the
/// module doc).
pub fn sft_example(
    doc: &TokenizedDoc,
    t: usize,
    teach: bool,
    tok: &Tokenizer,
    prompt: &Prompt,
    cfg: &Config,
) -> Option<(Vec<u32>, usize)> {
    let st = make_state(
        doc,
        t,
        tok,
        cfg.states.max_context_tokens,
        cfg.states.max_target_bytes,
    )?;
    let teacher = if teach { doc.teacher_at(t) } else { None };
    // The answer: the corpus's own tokens, not the answer re-tokenized inside the braces (byte-level
    // BPE would merge it with `{` or `}`), so the box holds exactly what the text continues with.
    let answer: &[u32] = match teacher {
        Some((_, k)) => &doc.ids[t..k],
        None => &doc.ids[t..t + 1],
    };
    let bytes: Vec<u8> = answer
        .iter()
        .flat_map(|&id| tok.bytes(id).to_vec())
        .collect();
    std::str::from_utf8(&bytes).ok()?;
    if !crate::reward::boxable_answer(&bytes) {
        return None;
    }
    let mut row = prompt.build(&st.context);
    let from = row.len();
    match teacher {
        Some((thought, _)) => row.extend(tok.encode(thought).ok()?),
        None => {
            let mut k = 0;
            let mut bytes = 0;
            while k < st.context.len()
                && (k == 0
                    || bytes + tok.bytes(st.context[st.context.len() - 1 - k]).len()
                        <= cfg.bootstrap.thought_bytes)
            {
                bytes += tok.bytes(st.context[st.context.len() - 1 - k]).len();
                k += 1;
            }
            row.extend_from_slice(&st.context[st.context.len() - k..]);
            row.push(st.next_token);
        }
    }
    row.push(tok.token_id("</think>")?);
    row.extend(tok.encode("\\boxed{").ok()?);
    row.extend_from_slice(answer);
    row.extend(tok.encode("}").ok()?);
    Some((row, from))
}

/// Every (document, position) of `docs` with a teacher thought.
pub fn teacher_positions(docs: &[TokenizedDoc]) -> Vec<(usize, usize)> {
    let mut out = vec![];
    for (d, doc) in docs.iter().enumerate() {
        for t in 1..doc.len() {
            if doc.teacher_at(t).is_some() {
                out.push((d, t));
            }
        }
    }
    out
}

pub(super) fn sft_batch(
    docs: &[TokenizedDoc],
    taught: &[(usize, usize)],
    n: usize,
    tok: &Tokenizer,
    prompt: &Prompt,
    cfg: &Config,
    rng: &mut Rng,
) -> (Vec<Vec<u32>>, Vec<usize>) {
    let (mut rows, mut from) = (vec![], vec![]);
    let mut tries = 0usize;
    while rows.len() < n {
        tries += 1;
        let share = cfg.bootstrap.teacher_share;
        let (d, t, teach) = if share > 0.0 && !taught.is_empty() && rng.next_f64() < share {
            let (d, t) = taught[rng.below(taught.len())];
            (d, t, true)
        } else {
            let d = rng.below(docs.len());
            if docs[d].len() < 2 {
                continue;
            }
            (d, 1 + rng.below(docs[d].len() - 1), false)
        };
        if let Some((r, f)) = sft_example(&docs[d], t, teach, tok, prompt, cfg) {
            rows.push(r);
            from.push(f);
        }
        assert!(tries < 1_000_000, "no position gives a warm-up example");
    }
    (rows, from)
}
