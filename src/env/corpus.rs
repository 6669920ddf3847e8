//! Corpus readers: plain UTF-8 files of any extension (cut into documents of whole paragraphs, at most
//! `chunk_bytes` each, so that a held-out share is a share of documents and not of files), directories
//! (recursive, sorted), and JSONL (one document per line, from one field or several joined). Bad input is skipped,
//! counted and reported with its file and line; an empty corpus is an error.

use std::path::{Path, PathBuf};

/// One document and where it came from (`file` or `file:line`).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub text: String,
    pub source: String,
}

/// A skipped input and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    pub source: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Corpus {
    pub docs: Vec<Document>,
    pub skipped: Vec<Skip>,
}

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the corpus has no usable document ({skipped} skipped{first})")]
    Empty {
        path: PathBuf,
        skipped: usize,
        first: String,
    },
    #[error("`corpus.fields` must name at least one JSONL field")]
    NoFields,
}

/// How JSONL lines become documents: the named string fields, joined by `separator`.
#[derive(Debug, Clone)]
pub struct JsonlFields {
    pub fields: Vec<String>,
    pub separator: String,
}

/// Cuts a plain text into documents: runs of whole paragraphs (split at blank lines) of at most
/// `max_bytes` bytes each, joined by a blank line; a paragraph longer than that is cut at whitespace
/// (or, for a word longer than `max_bytes`, at a character boundary). No document is empty or only
/// whitespace. `max_bytes = 0` keeps the text as one document.
pub fn cut_text(text: &str, max_bytes: usize) -> Vec<String> {
    if max_bytes == 0 {
        return if text.trim().is_empty() {
            vec![]
        } else {
            vec![text.to_string()]
        };
    }
    // Paragraphs, then each cut into pieces of at most `max_bytes`.
    let mut pieces: Vec<&str> = vec![];
    let mut para_start = None;
    let mut offset = 0;
    let mut paragraphs: Vec<&str> = vec![];
    for line in text.split_inclusive('\n') {
        let blank = line.trim().is_empty();
        if blank {
            if let Some(s) = para_start.take() {
                paragraphs.push(&text[s..offset]);
            }
        } else if para_start.is_none() {
            para_start = Some(offset);
        }
        offset += line.len();
    }
    if let Some(s) = para_start {
        paragraphs.push(&text[s..]);
    }
    for p in paragraphs {
        let mut rest = p.trim();
        while rest.len() > max_bytes {
            let mut cut = max_bytes;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(ws) = rest[..cut].rfind(char::is_whitespace).filter(|&w| w > 0) {
                cut = ws;
            }
            if cut == 0 {
                // A first character wider than the limit: take it whole.
                cut = rest.chars().next().map_or(rest.len(), char::len_utf8);
            }
            pieces.push(rest[..cut].trim_end());
            rest = rest[cut..].trim_start();
        }
        if !rest.is_empty() {
            pieces.push(rest);
        }
    }
    // Whole pieces packed into documents.
    let mut docs: Vec<String> = vec![];
    for piece in pieces {
        match docs.last_mut() {
            Some(d) if d.len() + 2 + piece.len() <= max_bytes => {
                d.push_str("\n\n");
                d.push_str(piece);
            }
            _ => docs.push(piece.to_string()),
        }
    }
    docs
}

/// Reads a file or a directory tree. Files ending in `.jsonl` are read line by line with `fields`;
/// other files are cut into documents of at most `chunk_bytes` ([`cut_text`]).
pub fn read_corpus(
    path: &Path,
    fields: &JsonlFields,
    chunk_bytes: usize,
) -> Result<Corpus, CorpusError> {
    if fields.fields.is_empty() {
        return Err(CorpusError::NoFields);
    }
    let mut files = vec![];
    collect_files(path, &mut files)?;
    files.sort();
    let mut corpus = Corpus::default();
    for file in &files {
        let bytes = std::fs::read(file).map_err(|source| CorpusError::Io {
            path: file.clone(),
            source,
        })?;
        let name = file.display().to_string();
        if file.extension().is_some_and(|e| e == "jsonl") {
            read_jsonl(&bytes, &name, fields, &mut corpus);
        } else {
            match String::from_utf8(bytes) {
                Ok(text) if text.trim().is_empty() => corpus.skipped.push(Skip {
                    source: name,
                    reason: "empty file".into(),
                }),
                Ok(text) => {
                    for (k, text) in cut_text(&text, chunk_bytes).into_iter().enumerate() {
                        corpus.docs.push(Document {
                            text,
                            source: format!("{name}#{}", k + 1),
                        });
                    }
                }
                Err(e) => corpus.skipped.push(Skip {
                    source: name,
                    reason: format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
                }),
            }
        }
    }
    if corpus.docs.is_empty() {
        let first = corpus
            .skipped
            .first()
            .map(|s| format!("; first: {}: {}", s.source, s.reason))
            .unwrap_or_default();
        return Err(CorpusError::Empty {
            path: path.to_path_buf(),
            skipped: corpus.skipped.len(),
            first,
        });
    }
    Ok(corpus)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), CorpusError> {
    let meta = std::fs::metadata(path).map_err(|source| CorpusError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|source| CorpusError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| CorpusError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let p = entry.path();
            if p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            collect_files(&p, out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn read_jsonl(bytes: &[u8], name: &str, f: &JsonlFields, corpus: &mut Corpus) {
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let source = format!("{name}:{}", i + 1);
        let skip = |reason: String, corpus: &mut Corpus| {
            corpus.skipped.push(Skip {
                source: source.clone(),
                reason,
            })
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            skip("invalid UTF-8".into(), corpus);
            continue;
        };
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                skip(format!("not valid JSON: {e}"), corpus);
                continue;
            }
        };
        let mut parts = vec![];
        let mut bad = None;
        for field in &f.fields {
            match value.get(field) {
                Some(serde_json::Value::String(s)) => parts.push(s.as_str()),
                Some(other) => {
                    bad = Some(format!(
                        "field `{field}` is not a string (got {})",
                        kind(other)
                    ));
                    break;
                }
                None => {
                    bad = Some(format!("field `{field}` is missing"));
                    break;
                }
            }
        }
        match bad {
            Some(reason) => skip(reason, corpus),
            None if parts.iter().all(|p| p.trim().is_empty()) => skip("empty text".into(), corpus),
            None => corpus.docs.push(Document {
                text: parts.join(&f.separator),
                source,
            }),
        }
    }
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(f: &[&str]) -> JsonlFields {
        JsonlFields {
            fields: f.iter().map(|s| s.to_string()).collect(),
            separator: "\n\n".into(),
        }
    }

    #[test]
    fn reads_directories_in_sorted_order_and_jsonl_fields_joined() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("b.md"), "second").unwrap();
        std::fs::write(dir.path().join("a.txt"), "first").unwrap();
        std::fs::write(dir.path().join("sub/c.jsonl"), "{\"problem\":\"p1\",\"solution\":\"s1\"}\n\n{\"problem\":\"p2\",\"solution\":\"s2\"}\n").unwrap();
        let c = read_corpus(dir.path(), &fields(&["problem", "solution"]), 0).unwrap();
        let texts: Vec<&str> = c.docs.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, vec!["first", "second", "p1\n\ns1", "p2\n\ns2"]);
        assert!(
            c.docs[3].source.ends_with("c.jsonl:3"),
            "{}",
            c.docs[3].source
        );
        assert!(c.skipped.is_empty());
    }

    #[test]
    fn bad_input_is_skipped_counted_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bin.txt"), b"ok\xff\xfe").unwrap();
        std::fs::write(
            dir.path().join("d.jsonl"),
            b"{\"text\":\"good\"}\n{\"other\":1}\n{\"text\":5}\n\xff\n{broken\n".as_slice(),
        )
        .unwrap();
        let c = read_corpus(dir.path(), &fields(&["text"]), 0).unwrap();
        assert_eq!(c.docs.len(), 1);
        let reasons: Vec<String> = c
            .skipped
            .iter()
            .map(|s| format!("{} {}", s.source, s.reason))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(
            reasons[0].contains("bin.txt") && reasons[0].contains("invalid UTF-8 at byte 2"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].ends_with("d.jsonl:2 field `text` is missing"),
            "{reasons:?}"
        );
        assert!(
            reasons[2].ends_with("d.jsonl:3 field `text` is not a string (got a number)"),
            "{reasons:?}"
        );
        assert!(
            reasons[3].ends_with("d.jsonl:4 invalid UTF-8"),
            "{reasons:?}"
        );
        assert!(
            reasons[4].contains("d.jsonl:5 not valid JSON"),
            "{reasons:?}"
        );
    }

    #[test]
    fn an_empty_corpus_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x.jsonl"), "{\"a\":1}\n").unwrap();
        let e = read_corpus(dir.path(), &fields(&["text"]), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no usable document") && e.contains("1 skipped") && e.contains("x.jsonl:1"),
            "{e}"
        );
        let e = read_corpus(Path::new("/no/such/corpus"), &fields(&["text"]), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/corpus"), "{e}");
    }

    #[test]
    fn plain_text_is_cut_into_whole_paragraphs_within_the_size() {
        let para = |i: usize| {
            format!(
                "Paragraph {i} has some words in it, {}.",
                "more ".repeat(i % 7)
            )
        };
        let text: String = (0..40).map(|i| para(i) + "\n\n").collect::<String>()
            + &"long ".repeat(200)
            + "\n\n \n\n"
            + &"x".repeat(500)
            + "\n";
        for max in [64, 300, 2048] {
            let docs = cut_text(&text, max);
            assert!(!docs.is_empty());
            for d in &docs {
                assert!(!d.trim().is_empty(), "an empty document");
                assert!(d.len() <= max, "{} bytes > {max}", d.len());
            }
            // Every word, in order, once.
            let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            let cut: Vec<String> = docs.iter().flat_map(|d| words(d)).collect();
            let whole = words(&text);
            if max >= 500 {
                assert_eq!(cut, whole, "max {max}");
            }
            assert_eq!(cut_text(&text, max), docs, "not deterministic");
        }
        // A paragraph that fits is never split; paragraphs are packed up to the size.
        let docs = cut_text(&text, 2048);
        assert!(
            docs.iter()
                .any(|d| d.contains(&para(3)) && d.contains(&para(4)))
        );
        assert_eq!(cut_text(&text, 0), vec![text.clone()]);
        assert!(cut_text(" \n\n \n", 100).is_empty());
        assert_eq!(cut_text("é".repeat(10).as_str(), 3), vec!["é"; 10]);
        // Through the reader: one file, many documents, each named by its place.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("book.txt"), &text).unwrap();
        let c = read_corpus(dir.path(), &fields(&["text"]), 300).unwrap();
        assert_eq!(c.docs.len(), cut_text(&text, 300).len());
        assert!(c.docs.len() > 10);
        assert!(
            c.docs[2].source.ends_with("book.txt#3"),
            "{}",
            c.docs[2].source
        );
    }
}
