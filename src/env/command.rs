//! `corpus.kind = "command"`: the environment plug-in. A process of the user's hands out documents,
//! one per request line `{"document": k}`, answered `{"text": "..."}`, or `{"end": true}` past the last
//! one. The plug-in works at the level of documents, so that everything `rpt` builds from documents
//! (the held-out split, the difficulty index, teacher thoughts, states, the environment's seeded
//! order and its `seek` on resume) holds for plug-in corpora unchanged.
//!
//! Determinism contract (the [`super::Environment`] trait's, at the document level): document k must
//! depend only on the plug-in's command line and k, and any k may be asked for, in any order. A
//! plug-in that fails (exits, hangs past `corpus.timeout_s`, answers a bad line) is restarted and asked
//! for the same k again; failing twice on one k stops with the plug-in's stderr and the bad line. A
//! resumed run reads the documents again from a fresh process; a plug-in that hands out different
//! documents then is caught by the difficulty index's fingerprint.

use crate::error::{Error, Result};
use crate::plugin::{PluginSpec, Pool};

/// At most this many documents are read from a plug-in that never says `end`.
pub const MAX_DOCUMENTS: usize = 10_000_000;

/// Every document the plug-in hands out, in order.
pub fn plugin_documents(spec: &PluginSpec) -> Result<Vec<String>> {
    let pool = Pool::new(spec.clone());
    let mut docs = vec![];
    while docs.len() < MAX_DOCUMENTS {
        let k = docs.len();
        let answer = pool.with(|p| document(p, k)).or_else(|first| {
            tracing::warn!(document = k, reason = %first, "environment plug-in failed; restarting it");
            pool.with(|p| document(p, k)).map_err(|second| {
                Error::Run(format!(
                    "document {k} failed twice, so the fault is not a passing one: {second}"
                ))
            })
        })?;
        match answer {
            Some(text) => docs.push(text),
            None => break,
        }
    }
    if docs.len() < 2 {
        return Err(Error::Run(format!(
            "the environment plug-in `{}` handed out {} document(s); a run needs at least 2 (one to train on, one held out)",
            spec.shown(),
            docs.len()
        )));
    }
    Ok(docs)
}

/// Document `k`, or `None` past the end.
fn document(
    p: &mut crate::plugin::Plugin,
    k: usize,
) -> std::result::Result<Option<String>, String> {
    let (n, answer) = p.ask(&serde_json::json!({ "document": k }))?;
    if answer.get("end").and_then(|e| e.as_bool()) == Some(true) {
        return Ok(None);
    }
    match answer.get("text").and_then(|t| t.as_str()) {
        Some(text) => Ok(Some(text.to_string())),
        None => Err(p.bad_answer(
            n,
            &format!("expected {{\"text\": \"...\"}} for document {k}, or {{\"end\": true}}"),
            &answer,
        )),
    }
}
