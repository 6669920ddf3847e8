//! States of METHOD §1 on text with multi-byte characters, the document split, and the environment's
//! seeded, resumable order.

use std::sync::Arc;

use rpt::env::{CorpusEnvironment, Environment, TokenizedDoc, make_state, split_documents};
use rpt::model::Tokenizer;

fn tokenizer() -> Tokenizer {
    // A small vocabulary so that some tokens split UTF-8 characters (emoji, CJK).
    let texts: Vec<String> = (0..30)
        .map(|i| {
            format!(
                "Problem {i}: $x = {i}$, café, 数学, 🙂. The answer is {}.",
                i * 7
            )
        })
        .collect();
    Tokenizer::train_bpe(&texts, 300, false).unwrap()
}

const DOC: &str = "Le café coûte 3 €. 数学は楽しい 🙂🙂! Then $x = 42$.";

#[test]
fn every_state_has_the_exact_bytes_and_boundaries() {
    let tok = tokenizer();
    let doc = TokenizedDoc::new(0, DOC, &tok).unwrap();
    assert_eq!(
        doc.bytes,
        DOC.as_bytes(),
        "token bytes reassemble the document"
    );
    let split_char = doc
        .ids
        .iter()
        .any(|&id| std::str::from_utf8(tok.bytes(id)).is_err());
    assert!(
        split_char,
        "the test needs a token that splits a UTF-8 character"
    );
    let max_bytes = 6;
    for t in 1..doc.len() {
        let st = make_state(&doc, t, &tok, 5, max_bytes).unwrap();
        let start = doc.offsets[t];
        assert_eq!(st.next_token, doc.ids[t]);
        assert_eq!(
            st.continuation,
            &doc.bytes[start..start + st.continuation.len()],
            "t = {t}"
        );
        // Boundaries: cumulative token lengths, whole tokens only, within the window unless one token is longer.
        let mut acc = 0;
        for (k, &b) in st.boundaries.iter().enumerate() {
            acc += tok.bytes(doc.ids[t + k]).len();
            assert_eq!(b, acc);
        }
        assert_eq!(*st.boundaries.last().unwrap(), st.continuation.len());
        assert!(
            st.continuation.len() <= max_bytes || st.boundaries.len() == 1,
            "t = {t}"
        );
        let next_fits = t + st.boundaries.len() < doc.len()
            && acc + tok.bytes(doc.ids[t + st.boundaries.len()]).len() <= max_bytes;
        assert!(!next_fits, "t = {t}: the window stopped early");
        // Context: ids ending at t, at most 5, starting on a UTF-8 character boundary.
        assert!(st.context.len() <= 5 && !st.context.is_empty());
        let cstart = t - st.context.len();
        assert_eq!(st.context, &doc.ids[cstart..t]);
        assert_ne!(
            doc.bytes[doc.offsets[cstart]] & 0xC0,
            0x80,
            "t = {t}: context starts inside a character"
        );
        if cstart > 0 && t >= 5 && t - 5 != cstart {
            // A shorter context only when the 5-token cut would start inside a character.
            assert_eq!(doc.bytes[doc.offsets[t - 5]] & 0xC0, 0x80);
        }
    }
    // End of document: the last position has only its own token; no state past the end or at 0.
    let last = make_state(&doc, doc.len() - 1, &tok, 5, max_bytes).unwrap();
    assert_eq!(last.boundaries.len(), 1);
    assert!(make_state(&doc, doc.len(), &tok, 5, max_bytes).is_none());
    assert!(make_state(&doc, 0, &tok, 5, max_bytes).is_none());
}

#[test]
fn documents_split_by_seed_without_overlap() {
    let (a, b) = split_documents(50, 0.2, 7);
    assert_eq!((a.len(), b.len()), (40, 10));
    let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
    all.sort();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
    assert_eq!(split_documents(50, 0.2, 7), (a, b.clone()));
    assert_ne!(split_documents(50, 0.2, 8).1, b);
    let (t, h) = split_documents(2, 0.01, 0);
    assert_eq!((t.len(), h.len()), (1, 1));
}

#[test]
fn the_environment_order_is_seeded_and_resumable() {
    let tok = Arc::new(tokenizer());
    let doc = TokenizedDoc::new(0, DOC, &tok).unwrap();
    let cands: Vec<(usize, usize)> = (1..doc.len()).map(|t| (0, t)).collect();
    let make =
        |seed| CorpusEnvironment::new(vec![doc.clone()], cands.clone(), tok.clone(), 8, 16, seed);
    let n = cands.len();
    let mut a = make(1);
    let first: Vec<usize> = (0..2 * n).map(|_| a.next_state().unwrap().pos).collect();
    let mut b = make(1);
    b.seek(25);
    let rest: Vec<usize> = (25..2 * n).map(|_| b.next_state().unwrap().pos).collect();
    assert_eq!(&first[25..], rest.as_slice());
    assert_eq!(a.cursor(), 2 * n as u64);
    // Each epoch visits every candidate once, and the second epoch is reshuffled.
    for e in 0..2 {
        let mut epoch: Vec<usize> = first[e * n..(e + 1) * n].to_vec();
        epoch.sort();
        assert_eq!(epoch, (1..doc.len()).collect::<Vec<_>>());
    }
    assert_ne!(first[..n], first[n..]);
    let mut c = make(2);
    let other: Vec<usize> = (0..n).map(|_| c.next_state().unwrap().pos).collect();
    assert_ne!(other, first[..n].to_vec());
    let mut bounded = make(1).with_max_epochs(1);
    assert_eq!(std::iter::from_fn(|| bounded.next_state()).count(), n);
}

/// The teacher-thought path: a document whose corpus offers thoughts yields warm-up rows that contain
/// the thought and box the whole result; the same text with no thoughts gets the generic thought only.
#[test]
fn warm_up_rows_carry_the_teacher_thought_where_the_corpus_offers_one() {
    use rpt::config::Config;
    use rpt::env::arithmetic_thoughts;
    use rpt::pipeline::rows::{sft_example, teacher_positions};
    use rpt::prompt::Prompt;

    let texts = rpt::env::generate_corpus(30, 5);
    let tok = Tokenizer::train_bpe(&texts, 400, false).unwrap();
    let cfg = Config::default();
    let prompt = Prompt::new(&cfg.prompt.template, &tok).unwrap();
    let text = &texts[0];
    let taught = TokenizedDoc::new(0, text, &tok)
        .unwrap()
        .with_thoughts(arithmetic_thoughts(text));
    let plain = TokenizedDoc::new(0, text, &tok).unwrap();
    assert!(teacher_positions(std::slice::from_ref(&plain)).is_empty());
    let positions = teacher_positions(std::slice::from_ref(&taught));
    assert!(!positions.is_empty(), "a worksheet states some arithmetic");

    let decode = |ids: &[u32]| String::from_utf8(tok.decode_bytes(ids)).unwrap();
    for &(_, t) in &positions {
        let (thought, end) = taught.teacher_at(t).unwrap();
        let (row, from) = sft_example(&taught, t, true, &tok, &prompt, &cfg).unwrap();
        let completion = decode(&row[from..]);
        let rest = decode(&taught.ids[t..end]);
        assert_eq!(completion, format!("{thought}</think>\\boxed{{{rest}}}"));
        // The box holds the rest of the number the thought computes (its digits end the thought).
        let number = rest.trim().trim_start_matches('-');
        assert!(
            !number.is_empty() && thought.ends_with(number),
            "{thought} / {rest}"
        );

        // The same position in a corpus with no thoughts, or with teaching off: the generic thought.
        for (doc, teach) in [(&plain, true), (&taught, false)] {
            let (row, from) = sft_example(doc, t, teach, &tok, &prompt, &cfg).unwrap();
            let generic = decode(&row[from..]);
            assert!(!generic.contains(thought), "{generic}");
            assert!(generic.ends_with(&format!("\\boxed{{{}}}", decode(&doc.ids[t..t + 1]))));
        }
    }
}

/// A generic thought inserted into a pre-training window: `… a b<think>b c …`, the text intact around
/// it, and only the `<think>` token left out of the loss (with left padding in the batch).
#[test]
fn a_thought_inserted_into_a_window_leaves_only_its_marker_unscored() {
    use rpt::model::{Device, Rng, Tensor};
    use rpt::pipeline::NllBatch;
    use rpt::pipeline::rows::insert_thought;

    const THINK: u32 = 99;
    let mut rng = Rng::new(7);
    let original: Vec<u32> = (0..10).collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let mut row = original.clone();
        let at = insert_thought(&mut row, THINK, &mut rng).unwrap();
        seen.insert(at);
        assert!((1..original.len() - 1).contains(&at), "{at}");
        assert_eq!(row.len(), original.len() + 2);
        assert_eq!((row[at], row[at + 1]), (THINK, original[at - 1]), "{row:?}");
        let mut back = row.clone();
        back.drain(at..at + 2);
        assert_eq!(back, original);
    }
    assert_eq!(seen.len(), original.len() - 2, "every place is drawn");
    for short in [vec![], vec![1], vec![1, 2]] {
        let mut row = short.clone();
        assert_eq!(insert_thought(&mut row, THINK, &mut rng), None);
        assert_eq!(row, short);
    }

    // Two rows, the shorter left-padded by 3. The log-prob of the skipped token is 100, every other 0.
    let rows = vec![(0..12).collect::<Vec<u32>>(), (0..9).collect()];
    let (skip_long, skip_short) = (5usize, 4usize);
    let (width, pads) = (12usize, [0usize, 3]);
    let mut lp = vec![0f32; 2 * (width - 1)];
    // Column j scores token j + 1 − pad of its row.
    lp[skip_long - 1] = 100.0;
    lp[(width - 1) + skip_short + pads[1] - 1] = 100.0;
    let lp = Tensor::from_vec(lp, (2, width - 1), &Device::Cpu).unwrap();
    let from = [1, 1];
    let (_, all) = NllBatch::new(&rows, &from, &Device::Cpu).unwrap();
    let (_, some) = NllBatch::skipping(
        &rows,
        &from,
        &[Some(skip_long), Some(skip_short)],
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(all.count, 11 + 8);
    assert_eq!(some.count, all.count - 2);
    let loss = |b: &NllBatch| b.loss(&lp).unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(loss(&some), 0.0, "a skipped token was scored");
    assert!((loss(&all) + 200.0 / 19.0).abs() < 1e-4, "{}", loss(&all));
}
