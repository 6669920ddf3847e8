//! Fuzzing of the parsers that read untrusted input: the `\boxed{}` answer parser (model output), the
//! run config (TOML), `config.json` and `tokenizer.json` (downloaded checkpoints), and the cluster's
//! wire messages (bytes from another process). Each target must never panic; where it accepts an
//! input, what it returns must hold together.
//!
//! These are random-input harnesses on the stable compiler (proptest, inputs built from valid examples
//! by mutation and from raw bytes), not coverage-guided fuzzing. CI runs `RPT_FUZZ_CASES` inputs per
//! target (default 2,000); run longer by hand with e.g. `RPT_FUZZ_CASES=200000 cargo test --release
//! --test fuzz`.

use std::path::Path;

use proptest::prelude::*;
use ractor::Message;
use ractor::message::SerializedMessage;
use rpt::actors::wire::{SampleRequest, WorkerMsg, WorkerSetup, decode};
use rpt::config::Config;
use rpt::model::{ModelConfig, Tokenizer};
use rpt::reward::parse_prediction;

fn cases() -> u32 {
    std::env::var("RPT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn fixture(file: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf-parity/qwen3")
            .join(file),
    )
    .unwrap()
}

/// Bytes made of the pieces the answer grammar is built from, and any byte.
fn completion() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"</think>".to_vec()),
        Just(b"<think>".to_vec()),
        Just(b"\\boxed{".to_vec()),
        Just(b"{".to_vec()),
        Just(b"}".to_vec()),
        Just(b"\\".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

/// Cuts, splices and byte flips of a valid text.
fn mutated(valid: String) -> impl Strategy<Value = Vec<u8>> {
    let n = valid.len();
    (
        0..=n,
        0..=n,
        proptest::collection::vec((0..n.max(1), any::<u8>()), 0..8),
        proptest::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(a, b, flips, insert)| {
            let (a, b) = (a.min(b), a.max(b));
            let mut bytes = valid.as_bytes().to_vec();
            for (i, x) in flips {
                if i < bytes.len() {
                    bytes[i] = x;
                }
            }
            let mut out = bytes[..a].to_vec();
            out.extend(insert);
            out.extend_from_slice(&bytes[b..]);
            out
        })
}

/// Every JSON pointer in `v`.
fn pointers(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, x) in o {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, p, out);
            }
        }
        _ => {}
    }
}

fn any_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::json;
    prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|x| json!(x)),
        any::<u64>().prop_map(|x| json!(x)),
        (-4i64..70_000).prop_map(|x| json!(x)),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| json!(x)),
        "[ -~]{0,12}".prop_map(|s| json!(s)),
        Just(json!([])),
        Just(json!({})),
        Just(json!([1, "a", null])),
    ]
}

/// A valid JSON document with values at random places replaced, or their keys removed.
fn json_mutated(valid: String) -> impl Strategy<Value = String> {
    let v: serde_json::Value = serde_json::from_str(&valid).unwrap();
    let mut paths = vec![];
    pointers(&v, String::new(), &mut paths);
    let n = paths.len();
    proptest::collection::vec((0..n, any_json(), any::<bool>()), 1..5).prop_map(move |edits| {
        let mut v = v.clone();
        for (i, value, remove) in edits {
            let p = &paths[i];
            let (parent, key) = p.rsplit_once('/').unwrap();
            match v.pointer_mut(parent) {
                Some(serde_json::Value::Object(o)) if remove => {
                    o.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                _ => {
                    if let Some(slot) = v.pointer_mut(p) {
                        *slot = value;
                    }
                }
            }
        }
        v.to_string()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn model_config_json_structured(text in json_mutated(fixture("config.json"))) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if let Ok(c) = ModelConfig::from_value(&v, Path::new("config.json")) {
            prop_assert!(c.head_dim % 2 == 0 && c.num_attention_heads % c.num_key_value_heads == 0);
            prop_assert!(!rpt::model::Layout::of(&c).tensors().is_empty());
            prop_assert!(c.rope_theta.is_finite() && c.rms_norm_eps > 0.0);
        }
    }

    #[test]
    fn boxed_parser(c in completion()) {
        if let Ok(y) = parse_prediction(&c) {
            // The prediction is a slice of the completion, after the last `</think>`.
            let think = c.windows(8).rposition(|w| w == b"</think>").unwrap();
            let start = y.as_ptr() as usize - c.as_ptr() as usize;
            prop_assert!(start >= think + 8 && start + y.len() <= c.len());
        }
    }

    #[test]
    fn run_config_toml(text in mutated(
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny.toml")).unwrap()
    )) {
        if let Ok(t) = std::str::from_utf8(&text)
            && let Ok(cfg) = Config::parse(t, Path::new("fuzz.toml"))
        {
            cfg.validate(Path::new("fuzz.toml")).unwrap();
        }
    }

    #[test]
    fn model_config_json(text in mutated(fixture("config.json"))) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text)
            && let Ok(c) = ModelConfig::from_value(&v, Path::new("config.json"))
        {
            // Accepted: every size is usable and the tensor list can be built.
            prop_assert!(c.head_dim % 2 == 0 && c.num_attention_heads % c.num_key_value_heads == 0);
            prop_assert!(!rpt::model::Layout::of(&c).tensors().is_empty());
            prop_assert!(c.rope_theta.is_finite() && c.rms_norm_eps > 0.0);
        }
    }

    #[test]
    fn wire_messages(variant in prop_oneof![
            Just("setup".to_string()), Just("weights".to_string()),
            Just("sample".to_string()), "[a-z]{0,8}"],
        args in proptest::collection::vec(any::<u8>(), 0..256),
        json in mutated(serde_json::json!({"step": 1, "version": 0, "states": []}).to_string())) {
        let (tx, _rx) = ractor::concurrency::oneshot();
        let msg = SerializedMessage::Call { variant, args, reply: tx.into(), metadata: None };
        let _ = WorkerMsg::deserialize(msg);
        let _ = decode::<SampleRequest>(&json, "sample");
        let _ = decode::<WorkerSetup>(&json, "setup");
    }
}

proptest! {
    // Loading a tokenizer costs far more than the other targets: a tenth of their budget.
    #![proptest_config(ProptestConfig::with_cases(cases() / 10 + 1))]

    #[test]
    fn tokenizer_json_structured(text in json_mutated(fixture("tokenizer.json"))) {
        if let Ok(tok) = Tokenizer::from_json(&text, Path::new("tokenizer.json")) {
            let _ = tok.encode("12 + 7 = 19");
        }
    }

    #[test]
    fn tokenizer_json(text in mutated(fixture("tokenizer.json"))) {
        if let Ok(t) = std::str::from_utf8(&text)
            && let Ok(tok) = Tokenizer::from_json(t, Path::new("tokenizer.json"))
        {
            let _ = tok.encode("12 + 7 = 19");
        }
    }
}

/// Messages over the size limit are refused before they are read.
#[test]
fn oversized_wire_messages_are_dropped() {
    let (tx, _rx) = ractor::concurrency::oneshot();
    let msg = SerializedMessage::Call {
        variant: "sample".into(),
        args: vec![b' '; rpt::actors::wire::MAX_MESSAGE_BYTES + 1],
        reply: tx.into(),
        metadata: None,
    };
    assert!(WorkerMsg::deserialize(msg).is_err());
    let big = vec![b' '; rpt::actors::wire::MAX_MESSAGE_BYTES + 1];
    let e = decode::<SampleRequest>(&big, "sample").unwrap_err();
    assert!(e.contains("over the limit"), "{e}");
}
