//! The difficulty index (METHOD §1): the proxy model's renormalised top-16 entropy at every position of
//! every document of a split, with a fingerprint of what produced it (corpus, tokenizer, proxy), so a
//! stale or damaged index is refused instead of silently used.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Which side of the document split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Heldout,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Heldout => "heldout",
        }
    }
}

/// The evaluation splits; they nest (every hard position is also medium and easy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    Easy,
    Medium,
    Hard,
}

impl Difficulty {
    pub const ALL: [Difficulty; 3] = [Difficulty::Easy, Difficulty::Medium, Difficulty::Hard];

    /// Lowest entropy (nats) of the split, as in the RPT paper.
    pub fn threshold(self) -> f32 {
        match self {
            Difficulty::Easy => 0.5,
            Difficulty::Medium => 1.0,
            Difficulty::Hard => 1.5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Difficulty::Easy => "easy",
            Difficulty::Medium => "medium",
            Difficulty::Hard => "hard",
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DocEntropies {
    /// Document number in the corpus.
    pub doc: usize,
    /// `entropy[t]` for the state at position t; entry 0 (no context) is 0.
    pub entropy: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EntropyIndex {
    pub version: u32,
    pub split: Split,
    pub fingerprint: String,
    pub top_k: usize,
    pub docs: Vec<DocEntropies>,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{path}: no difficulty index; run `rpt prepare` first")]
    Missing { path: PathBuf },
    #[error("{path}: the difficulty index is damaged ({reason}); re-run `rpt prepare`")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path}: the difficulty index is stale (made for another corpus, tokenizer or proxy model); re-run `rpt prepare`"
    )]
    Stale { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const VERSION: u32 = 1;

/// A fingerprint of everything the index depends on.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl EntropyIndex {
    pub fn new(split: Split, fingerprint: String, top_k: usize, docs: Vec<DocEntropies>) -> Self {
        EntropyIndex {
            version: VERSION,
            split,
            fingerprint,
            top_k,
            docs,
        }
    }

    /// Positions with entropy at or above `min` as (index into `docs`, position).
    pub fn positions_at_least(&self, min: f32) -> Vec<(usize, usize)> {
        let mut out = vec![];
        for (i, d) in self.docs.iter().enumerate() {
            for (t, &h) in d.entropy.iter().enumerate().skip(1) {
                if h >= min {
                    out.push((i, t));
                }
            }
        }
        out
    }

    /// Number of positions per difficulty split, and in all.
    pub fn counts(&self) -> (usize, [usize; 3]) {
        let all = self
            .docs
            .iter()
            .map(|d| d.entropy.len().saturating_sub(1))
            .sum();
        let per = Difficulty::ALL.map(|d| self.positions_at_least(d.threshold()).len());
        (all, per)
    }

    /// Writes the index atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), IndexError> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec(self).expect("index serialises");
        std::fs::write(&tmp, bytes).map_err(|source| IndexError::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, path).map_err(|source| IndexError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Loads an index and checks it was made for `expected` fingerprint and `split`.
    pub fn load(path: &Path, split: Split, expected: &str) -> Result<Self, IndexError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::Missing {
                    path: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(IndexError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let index: EntropyIndex =
            serde_json::from_slice(&bytes).map_err(|e| IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if index.version != VERSION || index.split != split {
            return Err(IndexError::Corrupt {
                path: path.to_path_buf(),
                reason: format!(
                    "version {} split {:?}, expected version {VERSION} split {split:?}",
                    index.version, index.split
                ),
            });
        }
        if index.fingerprint != expected {
            return Err(IndexError::Stale {
                path: path.to_path_buf(),
            });
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> EntropyIndex {
        EntropyIndex::new(
            Split::Train,
            fingerprint(&[b"corpus", b"tok"]),
            16,
            vec![DocEntropies {
                doc: 3,
                entropy: vec![0.0, 0.2, 0.7, 1.2, 1.6],
            }],
        )
    }

    #[test]
    fn splits_nest_and_counts_follow_thresholds() {
        let i = index();
        assert_eq!(i.counts(), (4, [3, 2, 1]));
        assert_eq!(i.positions_at_least(1.0), vec![(0, 3), (0, 4)]);
    }

    #[test]
    fn stale_and_corrupt_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.index.json");
        let i = index();
        i.save(&p).unwrap();
        assert_eq!(
            EntropyIndex::load(&p, Split::Train, &i.fingerprint).unwrap(),
            i
        );
        let e = EntropyIndex::load(&p, Split::Train, "other")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stale") && e.contains("rpt prepare"), "{e}");
        let e = EntropyIndex::load(&p, Split::Heldout, &i.fingerprint)
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged") && e.contains("rpt prepare"), "{e}");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
        let e = EntropyIndex::load(&p, Split::Train, &i.fingerprint)
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged") && e.contains("rpt prepare"), "{e}");
        let e = EntropyIndex::load(&dir.path().join("none.json"), Split::Train, "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("run `rpt prepare`"), "{e}");
    }

    #[test]
    fn fingerprints_separate_their_parts() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
    }
}
