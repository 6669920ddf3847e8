//! Corpus → states (METHOD §1). No tensors here: corpus readers, the built-in corpus, state
//! construction, the train / held-out split, the difficulty index file, and the [`Environment`] trait
//! that decides which states a run sees and in what order.

mod builtin;
mod command;
mod corpus;
mod index;
mod state;
mod teacher;

pub use builtin::generate_corpus;
pub use command::{MAX_DOCUMENTS, plugin_documents};
pub use corpus::{Corpus, CorpusError, Document, JsonlFields, Skip, cut_text, read_corpus};
pub use index::{Difficulty, DocEntropies, EntropyIndex, IndexError, Split, fingerprint};
pub use state::{State, TokenizedDoc, continuation_window, make_state};
pub use teacher::{SOLVER, TeacherThought, arithmetic_thoughts, solver_thoughts};

use crate::model::{Rng, Tokenizer};

/// Where a run's states come from, in what order, with what curriculum. The corpus environment is one
/// implementation; a researcher swaps in another by implementing this trait.
///
/// Determinism: the k-th state handed out must depend only on the environment's construction and k,
/// so that `seek(k)` after a restart reproduces the rest of the run.
pub trait Environment: Send {
    /// The next state, or `None` when the environment is exhausted.
    fn next_state(&mut self) -> Option<State>;
    /// How many states have been handed out (saved in checkpoints).
    fn cursor(&self) -> u64;
    /// Continues as if `cursor` states had been handed out.
    fn seek(&mut self, cursor: u64);
}

/// Splits documents `0..n` into (train, held-out) by document, seeded. With two or more documents,
/// each side gets at least one.
pub fn split_documents(n: usize, heldout_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, Rng::derive(&[seed, 0x5917]));
    let mut k = (n as f64 * heldout_fraction).round() as usize;
    if n >= 2 {
        k = k.clamp(1, n - 1);
    }
    let mut held: Vec<usize> = order[..k].to_vec();
    let mut train: Vec<usize> = order[k..].to_vec();
    held.sort_unstable();
    train.sort_unstable();
    (train, held)
}

/// Fisher–Yates with a seeded stream.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// RPT's environment: positions of tokenized documents whose difficulty passes `min_entropy`, visited
/// in a seeded order, reshuffled every epoch.
pub struct CorpusEnvironment {
    docs: Vec<TokenizedDoc>,
    candidates: Vec<(usize, usize)>,
    tokenizer: std::sync::Arc<Tokenizer>,
    max_context_tokens: usize,
    max_target_bytes: usize,
    seed: u64,
    cursor: u64,
    epoch_order: Option<(u64, Vec<usize>)>,
    max_epochs: Option<u64>,
}

impl CorpusEnvironment {
    /// `candidates`: (index into `docs`, position) pairs worth a rollout, e.g. from the entropy index.
    pub fn new(
        docs: Vec<TokenizedDoc>,
        candidates: Vec<(usize, usize)>,
        tokenizer: std::sync::Arc<Tokenizer>,
        max_context_tokens: usize,
        max_target_bytes: usize,
        seed: u64,
    ) -> Self {
        CorpusEnvironment {
            docs,
            candidates,
            tokenizer,
            max_context_tokens,
            max_target_bytes,
            seed,
            cursor: 0,
            epoch_order: None,
            max_epochs: None,
        }
    }

    /// Stop after this many passes (default: never).
    pub fn with_max_epochs(mut self, epochs: u64) -> Self {
        self.max_epochs = Some(epochs);
        self
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty()
    }

    /// The state at `k` in this environment's order.
    pub fn state_at(&mut self, k: u64) -> Option<State> {
        let n = self.candidates.len() as u64;
        if n == 0 {
            return None;
        }
        let epoch = k / n;
        if self.max_epochs.is_some_and(|m| epoch >= m) {
            return None;
        }
        if self.epoch_order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut order: Vec<usize> = (0..self.candidates.len()).collect();
            shuffle(&mut order, Rng::derive(&[self.seed, epoch]));
            self.epoch_order = Some((epoch, order));
        }
        let (_, order) = self.epoch_order.as_ref().expect("set above");
        let (d, pos) = self.candidates[order[(k % n) as usize]];
        make_state(
            &self.docs[d],
            pos,
            &self.tokenizer,
            self.max_context_tokens,
            self.max_target_bytes,
        )
    }
}

impl Environment for CorpusEnvironment {
    fn next_state(&mut self) -> Option<State> {
        let s = self.state_at(self.cursor);
        if s.is_some() {
            self.cursor += 1;
        }
        s
    }

    fn cursor(&self) -> u64 {
        self.cursor
    }

    fn seek(&mut self, cursor: u64) {
        self.cursor = cursor;
    }
}
