//! The decoder against Hugging Face transformers on the three fixture checkpoints (qwen2, qwen3, llama):
//! full logits, log-probs of the inputs, a left-padded batch, and 16 greedy tokens through the KV cache.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rpt::model::{
    Checkpoint, Decoder, Device, Mode, SampleParams, Tensor, attention_mask, generate, positions,
    token_logprobs,
};
use serde_json::Value;

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-parity")
        .join(name)
}

fn reference(name: &str) -> Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        fixture(name).join("reference.json"),
    )?)?)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row count");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row width");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn full_logits(model: &Decoder, seq: &[u32], mode: Mode) -> Result<Vec<Vec<f32>>> {
    let dev = model.device();
    let n = seq.len();
    let input = Tensor::from_vec(seq.to_vec(), (1, n), dev)?;
    let hidden = model.forward(
        &input,
        &positions(&[0], 0, n, dev)?,
        &attention_mask(&[0], 0, n, dev)?,
        None,
        mode,
    )?;
    Ok(model.logits(&hidden, mode)?.squeeze(0)?.to_vec2()?)
}

fn check(name: &str) -> Result<()> {
    let r = reference(name)?;
    let ck = Checkpoint::load(&fixture(name), &Device::Cpu)?;
    let model = ck.decoder()?;
    let seq = ids(&r["input_ids"]);
    let want = matrix(&r["logits"]);

    for mode in [Mode::Infer, Mode::Train] {
        let d = max_diff(&full_logits(&model, &seq, mode)?, &want);
        assert!(d < TOL, "{name} {mode:?}: logits differ by {d}");
    }

    // Log-probs of the inputs.
    let input = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu)?;
    let lp: Vec<f32> = token_logprobs(&model, &input, &[0], 1, 1.0, Mode::Infer)?
        .squeeze(0)?
        .to_vec1()?;
    let want_lp: Vec<f32> = r["logprob_of_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let d = max_diff(&[lp], &[want_lp]);
    assert!(d < TOL, "{name}: logprob_of_inputs differ by {d}");

    // Left-padded batch: padding and positions as transformers was given them.
    let rows: Vec<Vec<u32>> = r["batch_input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let masks: Vec<Vec<u32>> = r["batch_attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let pad: Vec<usize> = masks
        .iter()
        .map(|m| m.iter().take_while(|&&x| x == 0).count())
        .collect();
    let want_pos: Vec<Vec<u32>> = r["batch_position_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids)
        .collect();
    let width = rows[0].len();
    let dev = Device::Cpu;
    let pos = positions(&pad, 0, width, &dev)?;
    let got_pos: Vec<Vec<u32>> = pos.to_vec2()?;
    for (row, (g, w)) in got_pos.iter().zip(&want_pos).enumerate() {
        for j in pad[row]..width {
            assert_eq!(g[j], w[j], "{name}: position of row {row} token {j}");
        }
    }
    let input = Tensor::from_vec(rows.concat(), (rows.len(), width), &dev)?;
    for mode in [Mode::Infer, Mode::Train] {
        let hidden = model.forward(
            &input,
            &pos,
            &attention_mask(&pad, 0, width, &dev)?,
            None,
            mode,
        )?;
        let logits = model.logits(&hidden, mode)?;
        let last: Vec<Vec<f32>> = logits.narrow(1, width - 1, 1)?.squeeze(1)?.to_vec2()?;
        let d = max_diff(&last, &matrix(&r["batch_logits_last"]));
        assert!(d < TOL, "{name} {mode:?}: batch last logits differ by {d}");
        let row1: Vec<Vec<f32>> = logits
            .get(1)?
            .narrow(0, pad[1], width - pad[1])?
            .to_vec2()?;
        let d = max_diff(&row1, &matrix(&r["batch_logits_row1_valid"]));
        assert!(d < TOL, "{name} {mode:?}: padded row logits differ by {d}");
    }

    // Greedy through the KV cache, no early stop.
    let prompt = ids(&r["greedy_prompt"]);
    let want_cont = ids(&r["greedy_continuation"]);
    let params = SampleParams {
        temperature: 0.0,
        max_new_tokens: want_cont.len(),
        ..Default::default()
    };
    let out = generate(
        &model,
        std::slice::from_ref(&prompt),
        &params,
        &[0],
        &[],
        &|_, _| false,
    )?;
    assert_eq!(out[0].tokens, want_cont, "{name}: greedy tokens");
    // The same prompt beside a longer one (left padding in the cache) gives the same tokens.
    let longer: Vec<u32> = seq.clone();
    let out = generate(&model, &[longer, prompt], &params, &[0, 0], &[], &|_, _| {
        false
    })?;
    assert_eq!(
        out[1].tokens, want_cont,
        "{name}: greedy tokens in a padded batch"
    );
    Ok(())
}

#[test]
fn qwen2_matches_transformers() -> Result<()> {
    check("qwen2")
}

#[test]
fn qwen3_matches_transformers() -> Result<()> {
    check("qwen3")
}

#[test]
fn llama_matches_transformers() -> Result<()> {
    check("llama")
}
