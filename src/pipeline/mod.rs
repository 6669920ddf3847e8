//! What the commands run, as library functions: building the built-in model, the difficulty index,
//! evaluation, and the pieces they share (corpus loading, supervised losses, schedules).

pub mod bootstrap;
pub mod checks;
pub mod curve;
pub mod evaluate;
pub mod init;
pub mod memory;
pub mod model_dir;
pub mod next_token;
pub mod prepare;
pub mod rows;
pub mod sweep;
pub mod train;

use candle_core::Tensor;

use crate::config::{Config, TeacherKind};
use crate::env::{
    JsonlFields, TokenizedDoc, generate_corpus, read_corpus, solver_thoughts, split_documents,
};
use crate::error::Result;
use crate::model::{Decoder, Mode, Tokenizer, left_pad, token_logprobs};

/// The corpus's documents as text, with skipped inputs logged (never silently dropped).
pub fn load_texts(cfg: &Config) -> Result<Vec<String>> {
    match cfg.corpus.kind {
        crate::config::CorpusKind::Builtin => {
            return Ok(generate_corpus(cfg.corpus.documents, cfg.seed));
        }
        crate::config::CorpusKind::Command => {
            let c = &cfg.corpus;
            let spec = crate::plugin::PluginSpec::new(&c.command, c.timeout_s, "environment");
            return crate::env::plugin_documents(&spec);
        }
        crate::config::CorpusKind::Files => {}
    }
    let path = cfg
        .corpus
        .path
        .as_ref()
        .ok_or_else(|| crate::Error::Run("`corpus.path` is required".into()))?;
    let fields = JsonlFields {
        fields: cfg.corpus.fields.clone(),
        separator: cfg.corpus.separator.clone(),
    };
    let corpus = read_corpus(path, &fields, cfg.corpus.chunk_bytes)?;
    if !corpus.skipped.is_empty() {
        tracing::warn!(
            skipped = corpus.skipped.len(),
            documents = corpus.docs.len(),
            "corpus inputs skipped"
        );
        for s in corpus.skipped.iter().take(10) {
            tracing::warn!("skipped {}: {}", s.source, s.reason);
        }
    }
    Ok(corpus.docs.into_iter().map(|d| d.text).collect())
}

/// Tokenized documents of both splits: (train, held-out).
pub struct Splits {
    pub train: Vec<TokenizedDoc>,
    pub heldout: Vec<TokenizedDoc>,
}

pub fn tokenize_splits(cfg: &Config, texts: &[String], tok: &Tokenizer) -> Result<Splits> {
    let (train, held) = split_documents(texts.len(), cfg.corpus.heldout_fraction, cfg.seed);
    let teacher = cfg.corpus.teacher;
    let docs = |idx: Vec<usize>| -> Result<Vec<TokenizedDoc>> {
        idx.into_iter()
            .map(|i| {
                let doc = TokenizedDoc::new(i, &texts[i], tok)?;
                Ok(match teacher {
                    TeacherKind::Arithmetic => doc.with_thoughts(solver_thoughts(&texts[i])),
                    TeacherKind::None => doc,
                })
            })
            .collect()
    };
    Ok(Splits {
        train: docs(train)?,
        heldout: docs(held)?,
    })
}

/// Mean negative log-likelihood of the tokens of `rows` from index `loss_from[r]` on (left-padded).
/// Returns the scalar loss and the number of tokens it averages.
pub fn masked_nll(
    model: &Decoder,
    rows: &[Vec<u32>],
    loss_from: &[usize],
) -> Result<(Tensor, usize)> {
    let (batch, nll) = NllBatch::new(rows, loss_from, model.device())?;
    let lp = token_logprobs(model, &batch.ids, &batch.pad, 1, 1.0, Mode::Infer)?;
    Ok((nll.loss(&lp)?, nll.count))
}

/// One training step's worth of `masked_nll`: the left-padded rows and the mask over their
/// log-probs (taken from column 1 on).
pub struct NllBatch {
    mask: Tensor,
    pub count: usize,
}

impl NllBatch {
    pub fn new(
        rows: &[Vec<u32>],
        loss_from: &[usize],
        device: &crate::model::Device,
    ) -> Result<(crate::model::Padded, Self)> {
        Self::skipping(rows, loss_from, &vec![None; rows.len()], device)
    }

    /// [`NllBatch::new`] that also leaves out token `skip[i]` of row `i` where one is given.
    pub fn skipping(
        rows: &[Vec<u32>],
        loss_from: &[usize],
        skip: &[Option<usize>],
        device: &crate::model::Device,
    ) -> Result<(crate::model::Padded, Self)> {
        let batch = left_pad(rows, device)?;
        let (width, pad) = (batch.width, &batch.pad);
        let mut mask = Vec::with_capacity(rows.len() * (width - 1));
        for ((&p, &from), &skip) in pad.iter().zip(loss_from).zip(skip) {
            // Column j scores token j + 1 of the padded row, i.e. token j + 1 − p of the row.
            mask.extend((0..width - 1).map(|j| {
                let scored = j + 1 >= p + from.max(1) && skip != Some(j + 1 - p);
                (scored as u8) as f32
            }));
        }
        let count = mask.iter().filter(|&&m| m > 0.0).count();
        let mask = Tensor::from_vec(mask, (rows.len(), width - 1), device)?;
        Ok((batch, NllBatch { mask, count }))
    }

    /// The mean negative log-likelihood of the masked log-probs `lp` (rows, width − 1).
    pub fn loss(&self, lp: &Tensor) -> Result<Tensor> {
        Ok(((lp * &self.mask)?.sum_all()? / -(self.count.max(1) as f64))?)
    }
}

/// Linear warm-up then cosine decay to 10% of `lr` at `total` steps.
pub fn cosine_lr(lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return lr * (step + 1) as f64 / warmup as f64;
    }
    let p = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p.min(1.0)).cos()))
}

/// A progress bar on stderr (hidden when stderr is not a terminal or under `RPT_NO_PROGRESS`).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    if std::env::var_os("RPT_NO_PROGRESS").is_some()
        || !std::io::IsTerminal::is_terminal(&std::io::stderr())
    {
        // Not a terminal (a log file, CI): no bar, the log's lines only.
        return indicatif::ProgressBar::with_draw_target(
            Some(len),
            indicatif::ProgressDrawTarget::hidden(),
        );
    }
    let bar = bars().add(indicatif::ProgressBar::new(len));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Every progress bar of the process, drawn together at the bottom of the terminal.
pub fn bars() -> &'static indicatif::MultiProgress {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    BARS.get_or_init(indicatif::MultiProgress::new)
}

/// Where log lines go: stderr, above the progress bars (which are cleared for the line and drawn
/// again below it), so that a bar stays one line however much is logged.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter
    }
}
