//! The researcher's workbench: TensorBoard events read back by TensorBoard's own reader, the samples
//! a run records, `rpt report` and `rpt sweep`.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use common::{metrics, run, run_config};
use rpt::pipeline::train::TrainOptions;

/// A Python that has TensorBoard (`RPT_TEST_PYTHON`, else `python3`), or `None`: then the TensorBoard
/// test says it was skipped, unless `RPT_REQUIRE_TENSORBOARD` is set (CI sets it), which makes a missing
/// reader a failure.
fn tensorboard_python() -> Option<String> {
    let python = std::env::var("RPT_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import tensorboard"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    assert!(
        std::env::var_os("RPT_REQUIRE_TENSORBOARD").is_none(),
        "{python} cannot import tensorboard (pip install tensorboard, or set RPT_TEST_PYTHON)"
    );
    eprintln!("skipped: {python} cannot import tensorboard (pip install tensorboard to run this test)");
    None
}

fn read_events(python: &str, dir: &Path) -> Result<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/helpers/read_tensorboard.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn tensorboard_reads_every_step_once_even_across_a_resume() -> Result<()> {
    let Some(python) = tensorboard_python() else {
        return Ok(());
    };
    // Two steps, then resumed to four.
    let mut cfg = run_config("tb");
    cfg.train.steps = 2;
    run(&cfg, TrainOptions::default())?;
    cfg.train.steps = 4;
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    run(&cfg, resume)?;
    let events = read_events(&python, &cfg.run_dir.join("tensorboard"))?;
    let m = metrics(&cfg);
    assert_eq!(m.len(), 4);
    for key in ["reward_mean", "loss", "grad_norm", "accuracy", "flops_cumulative", "entropy"] {
        let points = events[key].as_array().unwrap_or_else(|| panic!("no {key} in {events}"));
        let steps: Vec<u64> = points.iter().map(|p| p[0].as_u64().unwrap()).collect();
        assert_eq!(steps, [1, 2, 3, 4], "{key}");
        for (p, line) in points.iter().zip(&m) {
            let (got, want) = (p[1].as_f64().unwrap(), line[key].as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{key}: {got} vs {want}"
            );
        }
    }
    assert!(events["format_failures/no_boxed"].is_array(), "{events}");
    Ok(())
}

#[test]
fn a_run_records_a_seeded_few_completions_per_step() -> Result<()> {
    let a = run_config("samples-a");
    run(&a, TrainOptions::default())?;
    let b = run_config("samples-b");
    run(&b, TrainOptions::default())?;
    let read = |dir: &PathBuf| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("samples.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (sa, sb) = (read(&a.run_dir), read(&b.run_dir));
    assert_eq!(sa, sb, "the same seed picks the same samples");
    assert_eq!(sa.len(), 4 * rpt::actors::SAMPLES_PER_STEP);
    for s in &sa {
        for key in ["step", "state", "thought", "answer", "reward", "continuation"] {
            assert!(!s[key].is_null(), "{key} missing in {s}");
        }
    }
    Ok(())
}
