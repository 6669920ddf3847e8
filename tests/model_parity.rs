//! The decoder against Hugging Face transformers on the three fixture checkpoints (qwen2, qwen3, llama):
//! full logits, log-probs of the inputs, a left-padded batch, and 16 greedy tokens through the KV cache.

use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::DType;
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
    check_on(name, &Device::Cpu, DType::F32)
}

/// The fixture `name` on `dev` with its weights in `dtype`. f32 must match transformers within
/// [`TOL`] (1e-3 on a GPU, whose kernels sum in another order) and give its greedy tokens; bf16
/// within 5% of the largest logit (bf16 keeps 8 bits of mantissa), its tokens unchecked.
fn check_on(name: &str, dev: &Device, dtype: DType) -> Result<()> {
    let r = reference(name)?;
    let ck = Checkpoint::load(&fixture(name), dev)?;
    let weights = ck
        .weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(dtype)?)))
        .collect::<Result<rpt::model::TensorMap>>()?;
    let model = Decoder::new(&ck.config, &weights)?;
    let seq = ids(&r["input_ids"]);
    let want = matrix(&r["logits"]);
    let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    let tol = match (dtype, dev.is_cpu()) {
        (DType::F32, true) => TOL,
        (DType::F32, false) => 1e-3,
        _ => 0.05 * scale,
    };
    let exact = dtype == DType::F32;

    for mode in [Mode::Infer, Mode::Train] {
        let d = max_diff(&full_logits(&model, &seq, mode)?, &want);
        assert!(
            d < tol,
            "{name} {dtype:?} {mode:?}: logits differ by {d} (tolerance {tol})"
        );
    }

    // Log-probs of the inputs.
    let input = Tensor::from_vec(seq.clone(), (1, seq.len()), dev)?;
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
    assert!(d < tol, "{name} {dtype:?}: logprob_of_inputs differ by {d}");

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
    let pos = positions(&pad, 0, width, dev)?;
    let got_pos: Vec<Vec<u32>> = pos.to_vec2()?;
    for (row, (g, w)) in got_pos.iter().zip(&want_pos).enumerate() {
        for j in pad[row]..width {
            assert_eq!(g[j], w[j], "{name}: position of row {row} token {j}");
        }
    }
    let input = Tensor::from_vec(rows.concat(), (rows.len(), width), dev)?;
    for mode in [Mode::Infer, Mode::Train] {
        let hidden = model.forward(
            &input,
            &pos,
            &attention_mask(&pad, 0, width, dev)?,
            None,
            mode,
        )?;
        let logits = model.logits(&hidden, mode)?;
        let last: Vec<Vec<f32>> = logits.narrow(1, width - 1, 1)?.squeeze(1)?.to_vec2()?;
        let d = max_diff(&last, &matrix(&r["batch_logits_last"]));
        assert!(
            d < tol,
            "{name} {dtype:?} {mode:?}: batch last logits differ by {d}"
        );
        let row1: Vec<Vec<f32>> = logits
            .get(1)?
            .narrow(0, pad[1], width - pad[1])?
            .to_vec2()?;
        let d = max_diff(&row1, &matrix(&r["batch_logits_row1_valid"]));
        assert!(
            d < tol,
            "{name} {dtype:?} {mode:?}: padded row logits differ by {d}"
        );
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
    assert_eq!(
        out[0].tokens.len(),
        want_cont.len(),
        "{name} {dtype:?}: greedy length"
    );
    if !exact {
        return Ok(());
    }
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

/// The candle path in bf16 (the GPU policy's dtype), run on the CPU: logits within bf16's precision
/// of transformers' f32, and sampling through the KV cache works.
#[test]
fn bf16_weights_match_within_bf16_precision() -> Result<()> {
    for name in ["qwen2", "qwen3", "llama"] {
        check_on(name, &Device::Cpu, DType::BF16)?;
    }
    Ok(())
}

/// The same checks on the first CUDA GPU, f32 and bf16 (run by `scripts/gpu-check`).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs a CUDA GPU: scripts/gpu-check runs it"]
fn cuda_matches_transformers_in_f32_and_bf16() -> Result<()> {
    let dev = Device::new_cuda(0)?;
    for name in ["qwen2", "qwen3", "llama"] {
        check_on(name, &dev, DType::F32)?;
        check_on(name, &dev, DType::BF16)?;
    }
    Ok(())
}
