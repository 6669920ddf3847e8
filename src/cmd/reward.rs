//! `rpt reward`: score `{"completion": …, "continuation": …}` lines with a reward variant, to check a
//! reward definition on real outputs. The continuation's tokens come from the model's tokenizer.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, Result};
use rpt::reward::{Case, from_config, parse_prediction};
use serde_json::Value;

#[derive(clap::Args, Debug)]
pub struct RewardArgs {
    /// Checkpoint whose tokenizer cuts the continuation into tokens.
    #[arg(long)]
    pub model: PathBuf,
    /// Reward variant (prefix_match, first_token, dense, conditional_dense, info_gain, command).
    #[arg(long, default_value = "prefix_match")]
    pub variant: String,
    /// For `--variant command`: the plug-in's program and arguments, split at spaces (no shell),
    /// e.g. "python3 examples/reward_prefix_match.py".
    #[arg(long)]
    pub command: Option<String>,
    /// For `--variant command`: seconds the plug-in may take per group.
    #[arg(long, default_value_t = 30.0)]
    pub timeout_s: f64,
    /// JSONL file; `-` reads stdin. `dense` lines need `guess_prob`; `info_gain` lines need
    /// `logp_with_thought` and `logp_baseline`. Lines sharing a `group` field are scored as one group.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub max_target_bytes: usize,
    #[arg(long)]
    pub json: bool,
}

struct Line {
    number: usize,
    group: Value,
    context: String,
    completion: String,
    continuation: Vec<u8>,
    boundaries: Vec<usize>,
    next_token: u32,
    guess_first_token: Option<u32>,
    guess_prob: Option<f64>,
    logp_with_thought: Option<f64>,
    logp_baseline: Option<f64>,
}

impl Line {
    fn case(&self) -> Case<'_> {
        Case {
            context: self.context.as_bytes(),
            completion: self.completion.as_bytes(),
            continuation: &self.continuation,
            boundaries: &self.boundaries,
            next_token: self.next_token,
            guess_first_token: self.guess_first_token,
            guess_prob: self.guess_prob,
            logp_with_thought: self.logp_with_thought,
            logp_baseline: self.logp_baseline,
        }
    }
}

fn read_lines(a: &RewardArgs, tok: &rpt::model::Tokenizer) -> Result<Vec<Line>> {
    anyhow::ensure!(
        a.input.as_os_str() == "-" || !a.input.is_dir(),
        "--input {}: is a directory; expected a JSONL file of {{\"completion\": ..., \"continuation\": ...}} lines (or - for stdin)",
        a.input.display()
    );
    let reader: Box<dyn BufRead> = if a.input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&a.input)
                .with_context(|| format!("opening {}", a.input.display()))?,
        ))
    };
    let name = a.input.display().to_string();
    let mut lines = vec![];
    for (i, line) in reader.lines().enumerate() {
        let number = i + 1;
        let line = line.with_context(|| format!("{name}:{number}: not UTF-8"))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line)
            .with_context(|| format!("{name}:{number}: not valid JSON"))?;
        let text = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .with_context(|| format!("{name}:{number}: field `{k}` must be a string"))
        };
        let num = |k: &str| -> Result<Option<f64>> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(other) => {
                    anyhow::bail!("{name}:{number}: field `{k}` must be a number, got {other}")
                }
            }
        };
        let completion = text("completion")?;
        let continuation = text("continuation")?;
        let ids = tok.encode(&continuation)?;
        anyhow::ensure!(!ids.is_empty(), "{name}:{number}: `continuation` is empty");
        let (bytes, boundaries) = rpt::env::continuation_window(tok, &ids, a.max_target_bytes);
        let guess_first_token = match parse_prediction(completion.as_bytes()) {
            Ok(y) if !y.is_empty() => tok.encode(&String::from_utf8_lossy(y))?.first().copied(),
            _ => None,
        };
        lines.push(Line {
            number,
            group: v.get("group").cloned().unwrap_or(Value::from(number)),
            context: match v.get("context") {
                None | Some(Value::Null) => String::new(),
                Some(_) => text("context")?,
            },
            completion,
            continuation: bytes,
            boundaries,
            next_token: ids[0],
            guess_first_token,
            guess_prob: num("guess_prob")?,
            logp_with_thought: num("logp_with_thought")?,
            logp_baseline: num("logp_baseline")?,
        });
    }
    Ok(lines)
}

pub fn run(a: &RewardArgs) -> Result<()> {
    let command: Vec<String> = a
        .command
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    anyhow::ensure!(
        a.variant != "command" || !command.is_empty(),
        "--variant command needs --command \"PROGRAM ARGS...\", e.g. --command \"python3 examples/reward_prefix_match.py\""
    );
    anyhow::ensure!(
        a.timeout_s.is_finite() && a.timeout_s > 0.0,
        "--timeout-s must be a positive number of seconds, got {}",
        a.timeout_s
    );
    let reward = from_config(&rpt::config::RewardSection {
        variant: a.variant.clone(),
        command,
        timeout_s: a.timeout_s,
        ..Default::default()
    })?;
    let tok = rpt::model::Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let lines = read_lines(a, &tok)?;
    // Groups in order of first appearance.
    let mut order: Vec<&Value> = vec![];
    for l in &lines {
        if !order.contains(&&l.group) {
            order.push(&l.group);
        }
    }
    let mut results = vec![];
    for g in order {
        let members: Vec<&Line> = lines.iter().filter(|l| &l.group == g).collect();
        let cases: Vec<Case> = members.iter().map(|l| l.case()).collect();
        let rewards = reward.score_group(&cases).with_context(|| {
            format!(
                "{}: group starting at line {}",
                a.input.display(),
                members[0].number
            )
        })?;
        results.extend(members.into_iter().zip(rewards));
    }
    results.sort_by_key(|(l, _)| l.number);
    let reason = |r: &rpt::reward::Reward| {
        r.format
            .map(|f| f.as_str())
            .unwrap_or(if r.correct { "correct" } else { "wrong" })
    };
    if a.json {
        let rows: Vec<Value> = results
            .iter()
            .map(|(l, r)| {
                let prediction = parse_prediction(l.completion.as_bytes())
                    .ok()
                    .map(|y| String::from_utf8_lossy(y).into_owned());
                serde_json::json!({"line": l.number, "reward": r.value, "correct": r.correct,
                    "reason": reason(r), "prediction": prediction})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"variant": a.variant, "results": rows})
        );
    } else {
        println!("{:>5}  {:>8}  reason", "line", "reward");
        for (l, r) in &results {
            println!("{:>5}  {:>8.4}  {}", l.number, r.value, reason(r));
        }
    }
    Ok(())
}
