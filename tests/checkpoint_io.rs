//! Checkpoints written from the learner's own memory and read back into a learner's existing
//! buffers: the round trip is exact (weights, AdamW's moments and step, the EMA teacher), and a
//! damaged or mismatched file is refused with its path and the tensor named.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rpt::checkpoint::{self, TrainerState};
use rpt::config::Config;
use rpt::learn::Learner;
use rpt::model::{Checkpoint, Device, Mode, Tensor, TensorMap, token_logprobs};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf-parity")
        .join(name)
}

/// A learner on the fixture whose weights, moments and EMA teacher are no longer the starting
/// ones: two AdamW steps on a log-likelihood, and the teacher moved off the start.
fn trained(ck: &Checkpoint) -> Result<Learner> {
    let mut cfg = Config::default();
    cfg.reward.variant = "info_gain".into();
    let mut l = Learner::new(&cfg, &ck.weights, &ck.config)?;
    let ids = Tensor::from_vec(
        vec![496u32, 315, 286, 263, 10, 90, 303, 201, 261, 320, 223, 61],
        (1, 12),
        &Device::Cpu,
    )?;
    for _ in 0..2 {
        let (_, grads) = l.params.value_and_grad(&ids, &[0], 4, 1.0, |lp| {
            let m = lp.mean_all()?;
            Ok::<_, anyhow::Error>((m.clone(), m.to_scalar::<f32>()?))
        })?;
        l.opt.step(&l.params, &grads, 1e-2, 1.0)?;
    }
    let moved = l.params.snapshot()?;
    l.ema = Some(moved);
    // Sanity: the update moved the model (a round trip of the starting weights would prove little).
    let before = token_logprobs(
        &Checkpoint::load(&fixture("qwen3"), &Device::Cpu)?.decoder()?,
        &ids,
        &[0],
        4,
        1.0,
        Mode::Train,
    )?;
    let after = token_logprobs(&l.params.decoder()?, &ids, &[0], 4, 1.0, Mode::Train)?;
    assert_ne!(bits(&before)?, bits(&after)?);
    Ok(l)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(v.iter().map(|x| x.to_bits()).collect())
}

fn same(a: &TensorMap, b: &TensorMap, what: &str) -> Result<()> {
    assert_eq!(a.len(), b.len(), "{what}: tensor count");
    for (name, t) in a {
        assert_eq!(bits(t)?, bits(&b[name])?, "{what}: `{name}` differs");
    }
    Ok(())
}

fn state(step: u64) -> TrainerState {
    TrainerState {
        step,
        cursor: 7,
        optimizer_step: step,
        seed: 0,
    }
}

#[test]
fn a_checkpoint_reads_back_into_a_fresh_learner_bit_for_bit() -> Result<()> {
    let ck = Checkpoint::load(&fixture("qwen3"), &Device::Cpu)?;
    let l = trained(&ck)?;
    let run = tempfile::tempdir()?;
    let dir = checkpoint::write(run.path(), &l, &ck.config, &ck.tokenizer, &state(2))?;

    // A fresh learner from the starting weights, as `rpt train --resume` makes one.
    let mut cfg = Config::default();
    cfg.reward.variant = "info_gain".into();
    let mut back = Learner::new(&cfg, &ck.weights, &ck.config)?;
    checkpoint::restore(&dir, &mut back, l.opt.step)?;
    same(&l.params.snapshot()?, &back.params.snapshot()?, "weights")?;
    same(&l.opt.state()?, &back.opt.state()?, "moments")?;
    same(
        l.ema.as_ref().unwrap(),
        back.ema.as_ref().unwrap(),
        "EMA teacher",
    )?;
    assert_eq!(back.opt.step, 2);

    // The weights file is an ordinary Hugging Face checkpoint: transformers' layout, f32.
    let reloaded = Checkpoint::load(&dir, &Device::Cpu)?;
    same(
        &l.params.snapshot()?,
        &reloaded.weights,
        "model.safetensors",
    )?;
    Ok(())
}

#[test]
fn a_mismatched_or_cut_checkpoint_is_refused_by_file_and_tensor() -> Result<()> {
    let ck = Checkpoint::load(&fixture("qwen3"), &Device::Cpu)?;
    let l = trained(&ck)?;
    let fresh = || Learner::new(&Config::default(), &ck.weights, &ck.config);
    let restore = |dir: &Path| -> String {
        let mut back = fresh().unwrap();
        checkpoint::restore(dir, &mut back, 2)
            .unwrap_err()
            .to_string()
    };

    // A moment of the wrong shape.
    let run = tempfile::tempdir()?;
    let dir = checkpoint::write(run.path(), &l, &ck.config, &ck.tokenizer, &state(2))?;
    let opt = dir.join("optimizer.safetensors");
    let mut moments = l.opt.state()?;
    let name = "m.model.norm.weight";
    let n = moments[name].elem_count();
    moments.insert(
        name.into(),
        Tensor::zeros((n + 1,), moments[name].dtype(), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&moments, &opt)?;
    let e = restore(&dir);
    assert!(
        e.contains("optimizer.safetensors") && e.contains(name),
        "{e}"
    );
    assert!(e.contains("damaged"), "{e}");

    // A moment for a parameter the model does not have.
    moments.insert(name.into(), l.opt.state()?[name].clone());
    moments.insert(
        "v.model.layers.99.mlp.up_proj.weight".into(),
        Tensor::zeros(3, moments[name].dtype(), &Device::Cpu)?,
    );
    candle_core::safetensors::save(&moments, &opt)?;
    let e = restore(&dir);
    assert!(e.contains("v.model.layers.99.mlp.up_proj.weight"), "{e}");

    // A cut weights file, and weights holding a NaN.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights)?;
    std::fs::write(&weights, &bytes[..bytes.len() / 2])?;
    let e = restore(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("damaged"),
        "{e}"
    );
    let mut w = l.params.snapshot()?;
    let nan = Tensor::full(f32::NAN, w["model.norm.weight"].dims(), &Device::Cpu)?;
    w.insert("model.norm.weight".into(), nan);
    candle_core::safetensors::save(&w, &weights)?;
    let e = restore(&dir);
    assert!(e.contains("model.norm.weight") && e.contains("NaN"), "{e}");
    Ok(())
}
