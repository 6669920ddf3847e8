//! `rpt prepare`: the difficulty index (METHOD §1). The proxy model (by default the starting policy)
//! reads every document once, teacher-forced and batched, and the renormalised top-k entropy of every
//! position is written per split, fingerprinted by corpus, tokenizer and proxy.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::Config;
use crate::env::{DocEntropies, EntropyIndex, Split, TokenizedDoc, fingerprint};
use crate::error::Result;
use crate::model::{Checkpoint, Device, sequence_entropies};

use super::{load_texts, progress, tokenize_splits};

/// Tokens per window the proxy reads at once, and the context carried into the next window.
const WINDOW: usize = 192;
const OVERLAP: usize = 64;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PrepareReport {
    pub split: Split,
    pub documents: usize,
    pub positions: usize,
    pub easy: usize,
    pub medium: usize,
    pub hard: usize,
    pub trainable: usize,
    pub positions_per_second: f64,
    pub path: PathBuf,
}

pub fn proxy_dir(cfg: &Config) -> PathBuf {
    cfg.model
        .proxy
        .clone()
        .unwrap_or_else(|| cfg.model.path.clone())
}

pub fn index_path(cfg: &Config, split: Split) -> PathBuf {
    cfg.run_dir
        .join("index")
        .join(format!("{}.index.json", split.as_str()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| crate::Error::io(path, e))
}

/// What the index depends on: the documents, the policy's tokenizer, the proxy's weights and config,
/// and how entropies were computed.
pub fn index_fingerprint(cfg: &Config, texts: &[String]) -> Result<String> {
    let proxy = proxy_dir(cfg);
    let tok = read(&cfg.model.path.join("tokenizer.json"))?;
    let weights = if proxy.join("model.safetensors").exists() {
        read(&proxy.join("model.safetensors"))?
    } else {
        read(&proxy.join("model.safetensors.index.json"))?
    };
    let pcfg = read(&proxy.join("config.json"))?;
    let how = format!(
        "k={} window={WINDOW} overlap={OVERLAP} heldout={} seed={}",
        cfg.states.entropy_top_k, cfg.corpus.heldout_fraction, cfg.seed
    );
    let mut parts: Vec<&[u8]> = vec![&tok, &weights, &pcfg, how.as_bytes()];
    parts.extend(texts.iter().map(|t| t.as_bytes()));
    Ok(fingerprint(&parts))
}

/// Builds the index of both splits.
pub fn prepare(cfg: &Config, device: &Device) -> Result<Vec<PrepareReport>> {
    let texts = load_texts(cfg)?;
    let policy = Checkpoint::load(&cfg.model.path, device)?;
    let proxy_path = proxy_dir(cfg);
    let proxy = if proxy_path == cfg.model.path {
        None
    } else {
        Some(Checkpoint::load(&proxy_path, device)?)
    };
    if let Some(p) = &proxy
        && p.tokenizer.inner().to_string(false).ok()
            != policy.tokenizer.inner().to_string(false).ok()
    {
        return Err(crate::Error::Run(format!(
            "{}: the proxy's tokenizer differs from the policy's ({}); positions would not line up",
            proxy_path.display(),
            cfg.model.path.display()
        )));
    }
    let model = proxy.as_ref().unwrap_or(&policy).decoder()?;
    let fp = index_fingerprint(cfg, &texts)?;
    let splits = tokenize_splits(cfg, &texts, &policy.tokenizer)?;
    std::fs::create_dir_all(cfg.run_dir.join("index"))
        .map_err(|e| crate::Error::io(cfg.run_dir.join("index"), e))?;
    let mut reports = vec![];
    for (split, docs) in [
        (Split::Train, &splits.train),
        (Split::Heldout, &splits.heldout),
    ] {
        let t0 = Instant::now();
        let entropies = index_docs(&model, docs, cfg.states.entropy_top_k)?;
        let index = EntropyIndex::new(split, fp.clone(), cfg.states.entropy_top_k, entropies);
        let path = index_path(cfg, split);
        index.save(&path)?;
        let (positions, [easy, medium, hard]) = index.counts();
        reports.push(PrepareReport {
            split,
            documents: docs.len(),
            positions,
            easy,
            medium,
            hard,
            trainable: index.positions_at_least(cfg.states.min_entropy).len(),
            positions_per_second: positions as f64 / t0.elapsed().as_secs_f64(),
            path,
        });
    }
    Ok(reports)
}

fn index_docs(
    model: &crate::model::Decoder,
    docs: &[TokenizedDoc],
    k: usize,
) -> Result<Vec<DocEntropies>> {
    let bar = progress(docs.len() as u64, "index");
    let mut out = Vec::with_capacity(docs.len());
    for chunk in docs.chunks(16) {
        let seqs: Vec<Vec<u32>> = chunk.iter().map(|d| d.ids.clone()).collect();
        let ent = sequence_entropies(model, &seqs, k, WINDOW, OVERLAP, 16)?;
        out.extend(chunk.iter().zip(ent).map(|(d, entropy)| DocEntropies {
            doc: d.doc,
            entropy,
        }));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Loads a split's index, refusing a missing, damaged or stale one.
pub fn load_index(cfg: &Config, split: Split, texts: &[String]) -> Result<EntropyIndex> {
    let fp = index_fingerprint(cfg, texts)?;
    Ok(EntropyIndex::load(&index_path(cfg, split), split, &fp)?)
}
