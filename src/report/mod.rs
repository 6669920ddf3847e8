//! `rpt report`: one self-contained HTML page over one or more run directories, with every figure
//! also written as PNG and SVG (plotted with `plotters`).
//!
//! Runs are read leniently: a `metrics.jsonl` line that does not parse (the torn last line of a killed
//! run) is skipped with a warning naming file and line, and unknown fields are ignored. Runs whose
//! configs differ only by `seed` form one series, drawn as the mean with a band from the lowest to the
//! highest seed; the config keys that differ between series name them in the legend.

mod compute;
mod figures;
mod html;
mod plot;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One run directory, as read.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// `config.toml` flattened to dotted keys (`reward.variant`), values as TOML text.
    pub config: BTreeMap<String, String>,
    pub metrics: Vec<serde_json::Value>,
    /// `eval.json`: `before` and `after`, each with `splits`.
    pub eval: Option<serde_json::Value>,
    pub samples: Vec<serde_json::Value>,
    /// `accuracy_vs_compute.json`, where `rpt eval --run` wrote one.
    pub compute: Option<serde_json::Value>,
}

/// Runs that differ only by seed, under one name.
#[derive(Debug, Clone)]
pub struct Series {
    /// The config keys that tell this series from the others (`reward.variant=dense`), or the run
    /// directory's name when nothing differs.
    pub label: String,
    pub runs: Vec<RunData>,
}

/// What `rpt report` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportSummary {
    pub html: PathBuf,
    pub figures: Vec<PathBuf>,
    pub series: usize,
    pub runs: usize,
    pub warnings: Vec<String>,
}

/// Reads a run directory; `warnings` collects skipped lines.
pub fn read_run(dir: &Path, warnings: &mut Vec<String>) -> Result<RunData> {
    let metrics_path = dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&metrics_path).map_err(|e| {
        Error::Run(format!(
            "{}: not a run directory: {} ({e})",
            dir.display(),
            metrics_path.display()
        ))
    })?;
    let mut metrics = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) if v.get("step").and_then(|s| s.as_u64()).is_some() => metrics.push(v),
            Ok(_) => warnings.push(format!(
                "{}:{}: skipped: a line without a `step`",
                metrics_path.display(),
                i + 1
            )),
            Err(e) => warnings.push(format!(
                "{}:{}: skipped: not JSON ({e}; a torn line of a killed run?)",
                metrics_path.display(),
                i + 1
            )),
        }
    }
    if metrics.is_empty() {
        return Err(Error::Run(format!(
            "{}: the run has no readable metrics (nothing to report)",
            metrics_path.display()
        )));
    }
    let config = std::fs::read_to_string(dir.join("config.toml"))
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
        .map(|t| crate::config::flat_keys(&t))
        .unwrap_or_default();
    let eval = std::fs::read_to_string(dir.join("eval.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let samples = std::fs::read_to_string(dir.join("samples.jsonl"))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let compute = std::fs::read_to_string(dir.join("accuracy_vs_compute.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    Ok(RunData {
        dir: dir.to_path_buf(),
        config,
        metrics,
        eval,
        samples,
        compute,
    })
}

/// Keys that never tell series apart: where a run writes, and its seed (seeds are a series' band).
const NOT_A_DIFFERENCE: &[&str] = &["run_dir", "seed"];

/// Groups runs that differ only by seed, and names each group by the keys that differ between groups.
pub fn group(runs: Vec<RunData>) -> Vec<Series> {
    let key_of = |r: &RunData| -> BTreeMap<String, String> {
        r.config
            .iter()
            .filter(|(k, _)| !NOT_A_DIFFERENCE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut groups: Vec<(BTreeMap<String, String>, Vec<RunData>)> = vec![];
    for r in runs {
        let k = key_of(&r);
        // Runs with no config are never merged.
        match groups.iter_mut().find(|(g, _)| !k.is_empty() && *g == k) {
            Some((_, members)) => members.push(r),
            None => groups.push((k, vec![r])),
        }
    }
    let all_keys: std::collections::BTreeSet<&String> =
        groups.iter().flat_map(|(k, _)| k.keys()).collect();
    let mut differing: Vec<&String> = all_keys
        .into_iter()
        .filter(|key| {
            let first = groups[0].0.get(*key);
            groups.iter().any(|(k, _)| k.get(*key) != first)
        })
        .collect();
    // The key that tells the most series apart first (`reward.variant` before a key that two linked
    // variants share), so that a shortened legend still names what differs.
    let distinct = |key: &String| {
        let values: std::collections::BTreeSet<Option<&String>> =
            groups.iter().map(|(k, _)| k.get(key)).collect();
        values.len()
    };
    differing.sort_by_key(|key| std::cmp::Reverse(distinct(key)));
    groups
        .iter()
        .map(|(k, members)| {
            let parts: Vec<String> = differing
                .iter()
                .map(|key| {
                    let v = k.get(*key).map_or("-", |v| v.as_str());
                    format!("{key}={}", v.trim_matches('"'))
                })
                .collect();
            let label = if parts.is_empty() {
                members[0].dir.file_name().map_or_else(
                    || members[0].dir.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                )
            } else {
                parts.join(", ")
            };
            Series {
                label,
                runs: members.clone(),
            }
        })
        .collect()
}

/// Short names for series labelled `key=value, key=value, …` (the keys that differ between them):
/// the values of the one key that tells every series apart, a key whose values are words before one
/// whose values are `true` and `false` (which say nothing without their key), and those before one
/// whose values are numbers (what a run is before how long or how big it was: `rpt` and `next_token`
/// rather than two step counts or FLOP budgets), the shortest values first; else all the values.
pub fn short_names(labels: &[String]) -> Vec<String> {
    let parts: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|l| {
            l.split(", ")
                .map(|p| p.split_once('=').unwrap_or(("", p)))
                .collect()
        })
        .collect();
    let keys: Vec<&str> = parts
        .first()
        .map_or(vec![], |p| p.iter().map(|kv| kv.0).collect());
    let best = keys
        .iter()
        .enumerate()
        .filter_map(|(k, key)| {
            let values: Vec<&str> = parts
                .iter()
                .map(|p| p.get(k).filter(|kv| kv.0 == *key).map(|kv| kv.1))
                .collect::<Option<_>>()?;
            let distinct = values
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let tier = if values.iter().all(|v| v.parse::<f64>().is_ok()) {
                2
            } else if values.iter().all(|v| v.parse::<bool>().is_ok()) {
                1
            } else {
                0
            };
            (distinct == labels.len())
                .then(|| ((tier, values.iter().map(|v| v.len()).max()), values))
        })
        .min_by_key(|(rank, _)| *rank);
    match best {
        Some((_, values)) => values.into_iter().map(str::to_string).collect(),
        None => parts
            .iter()
            .map(|p| p.iter().map(|kv| kv.1).collect::<Vec<_>>().join(", "))
            .collect(),
    }
}

/// Writes the report of `dirs` into `out` (`report.html`, `figures/*.png` and `*.svg`).
pub fn report(dirs: &[PathBuf], out: &Path) -> Result<ReportSummary> {
    if dirs.is_empty() {
        return Err(Error::Run(
            "rpt report needs at least one run directory".into(),
        ));
    }
    let mut warnings = vec![];
    let runs = dirs
        .iter()
        .map(|d| read_run(d, &mut warnings))
        .collect::<Result<Vec<_>>>()?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let n_runs = runs.len();
    let series = group(runs);
    let fig_dir = out.join("figures");
    std::fs::create_dir_all(&fig_dir).map_err(|e| Error::io(&fig_dir, e))?;
    let drawn = figures::draw_all(&series, &fig_dir)?;
    warnings.extend(drawn.warnings.iter().cloned());
    let page = html::page(&series, &drawn, &warnings);
    let html_path = out.join("report.html");
    crate::model::write_atomic(&html_path, page.as_bytes())?;
    Ok(ReportSummary {
        html: html_path,
        figures: drawn.files(),
        series: series.len(),
        runs: n_runs,
        warnings,
    })
}

/// The mean of `key` over a series' runs at each step where every run has it, with the lowest and
/// highest value (the band), against `x` (`step` or `flops_cumulative`, averaged too).
pub fn series_points(s: &Series, x: &str, key: &str) -> Vec<(f64, f64, f64, f64)> {
    let value = |m: &serde_json::Value, k: &str| -> Option<f64> {
        match k.split_once('/') {
            Some((a, b)) => m.get(a)?.get(b)?.as_f64(),
            None => m.get(k)?.as_f64(),
        }
    };
    let mut by_step: BTreeMap<u64, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &s.runs {
        for m in &r.metrics {
            let (Some(step), Some(xv), Some(y)) = (m["step"].as_u64(), value(m, x), value(m, key))
            else {
                continue;
            };
            by_step.entry(step).or_default().push((xv, y));
        }
    }
    let n = s.runs.len();
    by_step
        .values()
        .filter(|v| v.len() == n)
        .map(|v| {
            let k = v.len() as f64;
            let xm = v.iter().map(|p| p.0).sum::<f64>() / k;
            let ym = v.iter().map(|p| p.1).sum::<f64>() / k;
            let lo = v.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
            (xm, ym, lo, hi)
        })
        .collect()
}

/// Held-out accuracy of a series at `when` (`before` or `after`) on `split`, in `mode` (`standard`
/// or `reasoning`): the mean over its runs and the standard error of that mean, from each run's
/// √(p(1 − p)/n).
pub fn eval_score(s: &Series, when: &str, split: &str, mode: &str) -> Option<(f64, f64)> {
    let vals: Vec<(f64, f64)> = s
        .runs
        .iter()
        .filter_map(|r| {
            let sp = r.eval.as_ref()?.get(when)?.get("splits")?.get(split)?;
            Some((
                sp.get(format!("{mode}_accuracy"))?.as_f64()?,
                sp.get(format!("{mode}_se"))?.as_f64()?,
            ))
        })
        .collect();
    if vals.is_empty() {
        return None;
    }
    let k = vals.len() as f64;
    let mean = vals.iter().map(|v| v.0).sum::<f64>() / k;
    let se = vals.iter().map(|v| v.1 * v.1).sum::<f64>().sqrt() / k;
    Some((mean, se))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &str, cfg: &[(&str, &str)], ys: &[f64]) -> RunData {
        RunData {
            dir: PathBuf::from(dir),
            config: cfg
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            metrics: ys
                .iter()
                .enumerate()
                .map(|(i, y)| serde_json::json!({"step": i + 1, "reward_mean": y, "flops_cumulative": (i + 1) * 10}))
                .collect(),
            eval: None,
            samples: vec![],
            compute: None,
        }
    }

    #[test]
    fn seeds_are_one_series_named_by_the_keys_that_differ() {
        let runs = vec![
            run(
                "a",
                &[("seed", "0"), ("reward.variant", "\"dense\""), ("lr", "1")],
                &[1.0, 2.0],
            ),
            run(
                "b",
                &[("seed", "1"), ("reward.variant", "\"dense\""), ("lr", "1")],
                &[3.0, 4.0],
            ),
            run(
                "c",
                &[
                    ("seed", "0"),
                    ("reward.variant", "\"first_token\""),
                    ("lr", "1"),
                ],
                &[0.0, 0.0],
            ),
        ];
        let s = group(runs);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label, "reward.variant=dense");
        assert_eq!(s[1].label, "reward.variant=first_token");
        assert_eq!(s[0].runs.len(), 2);
        let p = series_points(&s[0], "step", "reward_mean");
        assert_eq!(p, [(1.0, 2.0, 1.0, 3.0), (2.0, 3.0, 2.0, 4.0)]);
    }

    #[test]
    fn a_torn_line_is_skipped_with_its_file_and_line_and_an_empty_run_is_named() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().to_path_buf();
        std::fs::write(
            dir.join("metrics.jsonl"),
            "{\"step\": 1, \"reward_mean\": 0.5, \"new_field\": [1]}\n{\"step\": 2, \"rew",
        )
        .unwrap();
        let mut w = vec![];
        let r = read_run(&dir, &mut w).unwrap();
        assert_eq!(r.metrics.len(), 1);
        assert!(
            w.len() == 1 && w[0].contains("metrics.jsonl:2") && w[0].contains("torn"),
            "{w:?}"
        );
        std::fs::write(dir.join("metrics.jsonl"), "{\"st").unwrap();
        let e = read_run(&dir, &mut w).unwrap_err().to_string();
        assert!(
            e.contains("no readable metrics") && e.contains("metrics.jsonl"),
            "{e}"
        );
        let e = read_run(&dir.join("nope"), &mut w).unwrap_err().to_string();
        assert!(
            e.contains("not a run directory") && e.contains("nope"),
            "{e}"
        );
    }
}
