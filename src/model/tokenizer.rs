//! The policy's tokenizer (`tokenizer.json`), with each token's exact bytes.
//!
//! Byte-level BPE tokens need not end on UTF-8 character boundaries, so everything downstream compares
//! bytes; this module is where a token id becomes its bytes.

use std::path::{Path, PathBuf};

use super::error::{ModelError, Result};

/// A loaded tokenizer plus a byte table: `bytes(id)` is the exact byte string of one token.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    token_bytes: Vec<Vec<u8>>,
    path: PathBuf,
}

/// GPT-2's byte ↔ printable-character table, inverted: char → byte.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut bytes: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = bytes.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    bytes
        .into_iter()
        .zip(chars)
        .map(|(b, c)| (char::from_u32(c).expect("valid code point"), b as u8))
        .collect()
}

/// A BPE model's merges must each join two vocabulary tokens into a third. `tokenizers` 0.23 panics
/// (a slice out of range) on a merge whose result is longer than every vocabulary token, so merges
/// are checked here first, by index.
fn check_merges(model: &serde_json::Value) -> std::result::Result<(), String> {
    if model.get("type").and_then(serde_json::Value::as_str) != Some("BPE") {
        return Ok(());
    }
    let (Some(vocab), Some(merges)) = (
        model.get("vocab").and_then(serde_json::Value::as_object),
        model.get("merges").and_then(serde_json::Value::as_array),
    ) else {
        return Ok(());
    };
    let prefix = model
        .get("continuing_subword_prefix")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    for (i, m) in merges.iter().enumerate() {
        let pair: Option<(String, String)> = match m {
            serde_json::Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            serde_json::Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        let Some((a, b)) = pair else {
            return Err(format!(
                "model.merges[{i}] is {m}; expected a pair of tokens"
            ));
        };
        let joined = format!("{a}{}", b.strip_prefix(prefix).unwrap_or(&b));
        for t in [&a, &b, &joined] {
            if !vocab.contains_key(t.as_str()) {
                return Err(format!(
                    "model.merges[{i}] = [{a:?}, {b:?}]: {t:?} is not in model.vocab"
                ));
            }
        }
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text, path)
    }

    /// Reads a `tokenizer.json` held in memory; `path` names its source in errors. Text that is not
    /// JSON, JSON that is not a tokenizer, and a tokenizer this library cannot read are told apart.
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| ModelError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if !value.get("model").is_some_and(serde_json::Value::is_object) {
            let what = match &value {
                serde_json::Value::Object(o) => format!(
                    "an object with keys [{}]",
                    o.keys().take(8).cloned().collect::<Vec<_>>().join(", ")
                ),
                other => format!("a JSON {}", json_kind(other)),
            };
            return Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!(
                    "is {what}, not a Hugging Face tokenizer (expected an object with a `model` \
                     section, as `tokenizers` saves it)"
                ),
            });
        }
        check_merges(&value["model"]).map_err(|reason| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        })?;
        // `tokenizers` panics on some malformed files instead of returning an error; a panic here
        // is reported as the file's fault, like any other.
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>());
        let inner = match parsed {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: format!("has a shape the `tokenizers` library cannot read: {e}"),
                });
            }
            Err(_) => {
                return Err(ModelError::Tokenizer {
                    path: path.to_path_buf(),
                    reason: "is malformed: the `tokenizers` library failed reading it".into(),
                });
            }
        };
        Self::from_inner(inner, path)
    }

    pub(crate) fn from_inner(inner: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        let vocab = inner.get_vocab_size(true);
        let table = byte_level_decoder();
        let mut token_bytes = vec![Vec::new(); vocab];
        for (piece, id) in inner.get_vocab(true) {
            let id = id as usize;
            if id >= vocab {
                continue;
            }
            token_bytes[id] = piece_bytes(&piece, &table);
        }
        // Added/special tokens are written literally.
        for (id, tok) in inner.get_added_tokens_decoder() {
            if (id as usize) < vocab {
                token_bytes[id as usize] = tok.content.into_bytes();
            }
        }
        Ok(Tokenizer {
            inner,
            token_bytes,
            path: path.to_path_buf(),
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Ids of `text`, no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The exact bytes of one token (empty for an id outside the vocabulary).
    pub fn bytes(&self, id: u32) -> &[u8] {
        self.token_bytes
            .get(id as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Concatenated bytes of `ids`.
    pub fn decode_bytes(&self, ids: &[u32]) -> Vec<u8> {
        ids.iter()
            .flat_map(|&i| self.bytes(i).iter().copied())
            .collect()
    }

    /// Text of `ids`; bytes that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids)).into_owned()
    }

    /// The id of a token written exactly as `piece` (special tokens such as `<think>`).
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Refuses a tokenizer with ids the model cannot embed.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        if self.vocab_size() > model_vocab {
            return Err(ModelError::Tokenizer {
                path: self.path.clone(),
                reason: format!(
                    "has {} tokens but the model's vocab_size is {model_vocab}; they do not belong together",
                    self.vocab_size()
                ),
            });
        }
        Ok(())
    }
}

/// Bytes of a vocabulary entry: byte-level (GPT-2 alphabet), SentencePiece (`▁`, `<0xNN>`) or plain.
fn piece_bytes(piece: &str, table: &std::collections::HashMap<char, u8>) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|s| s.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    if piece.chars().all(|c| table.contains_key(&c)) {
        return piece.chars().map(|c| table[&c]).collect();
    }
    piece.replace('\u{2581}', " ").into_bytes()
}

/// The special tokens of every tokenizer `rpt` trains, at ids 0, 1, 2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<think>", "</think>"];

impl Tokenizer {
    /// Trains a byte-level BPE tokenizer of `vocab_size` ids on `texts` (deterministic for the same
    /// input). Ids 0–2 are the special tokens (`<|endoftext|>`, `<think>`, `</think>`).
    pub fn train_bpe(texts: &[String], vocab_size: usize, split_digits: bool) -> Result<Self> {
        use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
        use tokenizers::models::{ModelWrapper, TrainerWrapper};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::pre_tokenizers::sequence::Sequence;
        use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
        use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};
        let wrap = |e: tokenizers::Error| ModelError::Tokenizer {
            path: PathBuf::from("<training>"),
            reason: e.to_string(),
        };
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .map(|s| AddedToken::from(*s, true))
            .collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials.clone())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        let mut tk = tokenizers::Tokenizer::new(ModelWrapper::BPE(BPE::default()));
        let bytes = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
        tk.with_pre_tokenizer(Some(if split_digits {
            // Every digit its own piece, the space before a number kept with its first digit.
            let digits = Split::new(
                SplitPattern::Regex(r" ?\p{N}".into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(wrap)?;
            PreTokenizerWrapper::Sequence(Sequence::new(vec![digits.into(), bytes]))
        } else {
            bytes
        }));
        tk.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
            false, true, true,
        ))));
        tk.train(&mut trainer, texts.iter()).map_err(wrap)?;
        tk.add_special_tokens(specials).map_err(wrap)?;
        Self::from_inner(tk, Path::new("tokenizer.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_tokenizer_round_trips_bytes_and_is_deterministic() {
        let texts: Vec<String> = (0..50)
            .map(|i| format!("Solve $3x + {i} = 7$. café 数学 🙂 x^{{2}}"))
            .collect();
        let tok = Tokenizer::train_bpe(&texts, 320, false).unwrap();
        assert_eq!(tok.token_id("<think>"), Some(1));
        assert_eq!(tok.token_id("</think>"), Some(2));
        let text = "Then $x = 42$, café 数学 🙂 and <think>yes</think>";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode_bytes(&ids), text.as_bytes());
        assert!(ids.contains(&1) && ids.contains(&2));
        let again = Tokenizer::train_bpe(&texts, 320, false).unwrap();
        assert_eq!(
            tok.inner().to_string(false).unwrap(),
            again.inner().to_string(false).unwrap()
        );
    }

    #[test]
    fn split_digits_writes_every_digit_as_its_own_token() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("Then ${i} + {} = {}$. Each term is 162 more.", i * 7, i * 8))
            .collect();
        let pieces = |split: bool| {
            let tok = Tokenizer::train_bpe(&texts, 400, split).unwrap();
            let text = "So $47 + 115 = 162$.";
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode_bytes(&ids), text.as_bytes());
            ids.iter()
                .map(|&id| String::from_utf8(tok.bytes(id).to_vec()).unwrap())
                .collect::<Vec<_>>()
        };
        let split = pieces(true);
        let at = split.iter().position(|p| p == " =").unwrap();
        assert_eq!(split[at + 1..at + 4], [" 1", "6", "2"], "{split:?}");
        assert!(split.contains(&"4".to_string()) && split.contains(&"7".to_string()));
        // Without the split, BPE merges digits of numbers this frequent.
        let merged = pieces(false);
        assert!(
            merged
                .iter()
                .any(|p| p.trim().len() > 1 && p.trim().bytes().all(|b| b.is_ascii_digit())),
            "{merged:?}"
        );
    }
}
