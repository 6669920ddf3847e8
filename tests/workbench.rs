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
    eprintln!(
        "skipped: {python} cannot import tensorboard (pip install tensorboard to run this test)"
    );
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
    common::run_then_resume(&mut cfg, 2, 4)?;
    let events = read_events(&python, &cfg.run_dir.join("tensorboard"))?;
    let m = metrics(&cfg);
    assert_eq!(m.len(), 4);
    for key in [
        "reward_mean",
        "loss",
        "grad_norm",
        "accuracy",
        "flops_cumulative",
        "entropy",
    ] {
        let points = events[key]
            .as_array()
            .unwrap_or_else(|| panic!("no {key} in {events}"));
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
        for key in [
            "step",
            "state",
            "thought",
            "answer",
            "reward",
            "continuation",
        ] {
            assert!(!s[key].is_null(), "{key} missing in {s}");
        }
    }
    Ok(())
}

/// Every `src="..."` and `href="..."` of a page.
fn links(html: &str) -> Vec<String> {
    let mut out = vec![];
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap();
            out.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    out
}

/// The mean over the last tenth of the steps (at least one) and its standard error, as the report
/// table prints them, computed here from the metrics.
fn late(m: &[serde_json::Value], key: &str) -> String {
    let tail = (m.len() / 10).max(1);
    let v: Vec<f64> = m[m.len() - tail..]
        .iter()
        .map(|l| l[key].as_f64().unwrap())
        .collect();
    let k = v.len() as f64;
    let mean = v.iter().sum::<f64>() / k;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (k - 1.0).max(1.0);
    format!("{mean:.3} ± {:.3}", (var / k).sqrt())
}

#[test]
fn a_report_of_two_real_runs_links_only_files_that_exist_and_states_their_numbers() -> Result<()> {
    let a = run_config("report-a");
    run(&a, TrainOptions::default())?;
    let mut b = run_config("report-b");
    b.reward.variant = "prefix_match".into();
    b.grpo.advantage = rpt::config::Advantage::Grpo;
    run(&b, TrainOptions::default())?;
    let out = a.run_dir.with_file_name("report-out");
    let s = rpt::report::report(&[a.run_dir.clone(), b.run_dir.clone()], &out)?;
    assert_eq!((s.runs, s.series), (2, 2));
    let html = std::fs::read_to_string(&s.html)?;
    let targets = links(&html);
    assert!(targets.len() > 40, "{} links", targets.len());
    for t in &targets {
        assert!(
            out.join(t).is_file(),
            "the page links {t}, which is not there"
        );
    }
    assert!(!s.figures.is_empty());
    for f in &s.figures {
        let bytes = std::fs::read(f)?;
        match f.extension().and_then(|e| e.to_str()) {
            Some("png") => {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
                let (w, h) = (
                    u32::from_be_bytes(bytes[16..20].try_into()?),
                    u32::from_be_bytes(bytes[20..24].try_into()?),
                );
                assert_eq!((w, h), (760, 420), "{}", f.display());
            }
            Some("svg") => {
                let t = String::from_utf8(bytes)?;
                assert!(
                    t.starts_with("<svg") && t.trim_end().ends_with("</svg>"),
                    "{}",
                    f.display()
                );
                assert!(
                    t.contains("<polyline") || t.contains("<rect"),
                    "{}",
                    f.display()
                );
            }
            other => panic!("unexpected figure file {other:?}"),
        }
    }
    // The series are named by the key that differs, and the table's numbers are the metrics'.
    assert!(
        html.contains("reward.variant=info_gain") && html.contains("reward.variant=prefix_match")
    );
    for cfg in [&a, &b] {
        let m = metrics(cfg);
        assert!(
            html.contains(&late(&m, "reward_mean")),
            "{}",
            late(&m, "reward_mean")
        );
        assert!(html.contains(&late(&m, "accuracy")));
    }
    assert!(html.contains("<b>step 1</b>"), "no early samples");
    if let Some(chromium) = chromium() {
        look_with_chromium(&chromium, &s.html)?;
    }
    Ok(())
}

#[test]
fn report_reads_what_it_can_and_names_what_it_cannot() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let run_dir = dir.path().join("killed");
    std::fs::create_dir_all(&run_dir)?;
    std::fs::write(
        run_dir.join("metrics.jsonl"),
        "{\"step\": 1, \"reward_mean\": 0.25, \"accuracy\": 0.5, \"someday\": {\"x\": 1}}\n{\"step\": 2, \"reward_mean\": 0.5, \"accuracy\": 0.5}\n{\"step\": 3, \"rew",
    )?;
    let out = dir.path().join("out").display().to_string();
    let d = run_dir.display().to_string();
    let (ok, stdout, err) = common::rpt_cli(&["report", &d, "--out", &out], &[])?;
    assert!(ok, "{err}");
    assert!(
        stdout.contains("metrics.jsonl:3") && stdout.contains("skipped"),
        "{stdout}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let e = empty.display().to_string();
    let (ok, _, err) = common::rpt_cli(&["report", &d, &e], &[])?;
    assert!(
        !ok && err.contains("empty") && err.contains("not a run directory"),
        "{err}"
    );
    Ok(())
}

/// Debian's Chromium (`RPT_CHROMIUM`, else `/usr/bin/chromium`), or `None`: the look is then skipped
/// with a notice, unless `RPT_REQUIRE_CHROMIUM` is set (CI sets it).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("RPT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("RPT_REQUIRE_CHROMIUM").is_none(),
        "{} is not there (apt-get install chromium, or set RPT_CHROMIUM)",
        path.display()
    );
    eprintln!(
        "skipped the look in Chromium: {} is not there",
        path.display()
    );
    None
}

/// Opens the page headless, takes a screenshot (kept as `target/report-screenshot.png` to look at),
/// and checks that every resource loaded and no script failed.
fn look_with_chromium(chromium: &Path, page: &Path) -> Result<()> {
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report-screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir()?;
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1400,2200",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.canonicalize()?.display()))
        .output()?;
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {log}");
    for bad in ["Failed to load resource", "ERR_FILE_NOT_FOUND", "Uncaught"] {
        assert!(
            !log.contains(bad),
            "the page did not load cleanly ({bad}): {log}"
        );
    }
    let png = std::fs::read(&shot)?;
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "screenshot of {} bytes",
        png.len()
    );
    Ok(())
}

#[test]
fn a_sweep_runs_every_cell_once_and_a_restart_runs_only_the_rest() -> Result<()> {
    let base_cfg = run_config("sweep-base");
    let dir = base_cfg.run_dir.clone();
    std::fs::write(dir.join("base.toml"), toml::to_string(&base_cfg)?)?;
    let out = dir.join("cells");
    std::fs::write(
        dir.join("sweep.toml"),
        format!(
            "base = \"base.toml\"\nout = {:?}\nseeds = [5]\n[set]\n\"train.steps\" = 2\n[grid]\n\"reward.variant\" = [\"prefix_match\", \"first_token\"]\n\"optim.lr\" = [0.001, 0.002]\n",
            out.display().to_string()
        ),
    )?;
    let file = dir.join("sweep.toml").display().to_string();
    // The first invocation stops after one cell, as a killed sweep would have.
    let (ok, stdout, err) = common::rpt_cli(&["sweep", &file, "--max-cells", "1"], &[])?;
    assert!(ok, "{err}");
    let first = out.join("lr=0.001_variant=prefix_match_seed=5");
    assert!(first.join(rpt::pipeline::sweep::DONE).exists(), "{stdout}");
    let stamp = std::fs::metadata(first.join("metrics.jsonl"))?.modified()?;
    let (ok, stdout, err) = common::rpt_cli(&["sweep", &file], &[])?;
    assert!(ok, "{err}");
    assert!(
        stdout.contains("done already") && stdout.contains("report:"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::metadata(first.join("metrics.jsonl"))?.modified()?,
        stamp,
        "the finished cell ran again"
    );
    for (lr, variant) in [
        (0.001, "prefix_match"),
        (0.001, "first_token"),
        (0.002, "prefix_match"),
        (0.002, "first_token"),
    ] {
        let cell = out.join(format!("lr={lr}_variant={variant}_seed=5"));
        let saved = rpt::config::Config::load(&cell.join("config.toml"))?;
        assert_eq!(
            (
                saved.optim.lr,
                saved.reward.variant.as_str(),
                saved.seed,
                saved.train.steps
            ),
            (lr, variant, 5, 2)
        );
        assert_eq!(
            std::fs::read_to_string(cell.join("metrics.jsonl"))?
                .lines()
                .count(),
            2
        );
    }
    assert!(out.join("report/report.html").is_file());
    Ok(())
}
