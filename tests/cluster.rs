//! Scale-out over ractor_cluster: `rpt worker` processes join a run and sample for it. Their groups are
//! the ones the run would have sampled itself, so the metrics equal a run without workers; a worker
//! that dies mid-request loses nothing (its states are re-issued); a wrong cookie or a missing worker
//! is refused with an error that says what to check.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::Result;
use common::{learned_states, metrics, run, tiny_config, without_placement};
use rpt::config::{ClusterSection, Config};
use rpt::model::Device;
use rpt::pipeline::train::TrainOptions;
use rpt::pipeline::{bootstrap::bootstrap, prepare};

/// The tiny model, its index, and the metrics of a run without workers, made once.
fn shared() -> &'static (PathBuf, Config, Vec<serde_json::Value>) {
    static CELL: OnceLock<(PathBuf, Config, Vec<serde_json::Value>)> = OnceLock::new();
    CELL.get_or_init(|| {
        let root = common::scratch("cluster");
        let model = root.join("model");
        let mut cfg = tiny_config(&root, &model);
        // Enough states a step that the run's local policy and the workers all get some.
        cfg.rollout.states_per_step = 6;
        bootstrap(&cfg, &model, &Device::Cpu).unwrap();
        prepare::prepare(&cfg, &Device::Cpu).unwrap();
        let local = with_run_dir(&cfg, &root, "local");
        run(&local, TrainOptions::default()).unwrap();
        let m = metrics(&local);
        (root, cfg, m)
    })
}

/// One cluster test at a time: they share the process's actor groups and a port.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_run_dir(base: &Config, root: &std::path::Path, name: &str) -> Config {
    let mut cfg = base.clone();
    cfg.run_dir = root.join(name);
    std::fs::create_dir_all(cfg.run_dir.join("index")).unwrap();
    for f in ["train.index.json", "heldout.index.json"] {
        std::fs::copy(
            base.run_dir.join("index").join(f),
            cfg.run_dir.join("index").join(f),
        )
        .unwrap();
    }
    cfg
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A run config listening on a fresh port for `min_workers` workers.
fn cluster_config(name: &str, min_workers: usize, wait_s: f64) -> (Config, u16) {
    let (root, base, _) = shared();
    let mut cfg = with_run_dir(base, root, name);
    let port = free_port();
    cfg.cluster = Some(ClusterSection {
        listen: format!("127.0.0.1:{port}"),
        cookie: "test-cookie".into(),
        min_workers,
        wait_s,
        request_timeout_s: 120.0,
    });
    (cfg, port)
}

/// A worker process, killed if a test fails before it has finished.
struct Worker(Option<Child>);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn worker(port: u16, cookie: &str, extra: &[&str]) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_rpt"))
        .args(["worker", "--connect", &format!("127.0.0.1:{port}")])
        .args(["--cookie", cookie, "--wait", "60"])
        .args(extra)
        .env("RPT_LOG", "warn")
        .env_remove("RPT_CLUSTER_COOKIE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting `rpt worker`");
    Worker(Some(child))
}

fn finish(mut w: Worker) -> (i32, String, String) {
    let out = w.0.take().unwrap().wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn total(m: &[serde_json::Value], key: &str) -> u64 {
    m.iter().map(|l| l[key].as_u64().unwrap()).sum()
}

#[test]
fn workers_sample_for_the_run_and_change_nothing_it_learns() -> Result<()> {
    let _g = serial();
    let (_, _, local) = shared();
    let (cfg, port) = cluster_config("two-workers", 2, 60.0);
    let workers = [
        worker(port, "test-cookie", &[]),
        worker(port, "test-cookie", &[]),
    ];
    let summary = run(&cfg, TrainOptions::default())?;
    assert_eq!(summary.steps, cfg.train.steps);
    assert_eq!(summary.reissued, 0);
    let m = metrics(&cfg);
    // Every step's states were split between the local policy and the two workers.
    for l in &m {
        assert_eq!(l["remote_states"].as_u64(), Some(4), "{l}");
    }
    // Sampled elsewhere, learned the same: identical metrics, step for step.
    assert_eq!(
        without_placement(m.clone()),
        without_placement(local.clone())
    );
    // The run closing its node lets each worker finish cleanly, reporting what it sampled.
    let mut sampled = 0;
    for w in workers {
        let (code, out, err) = finish(w);
        assert_eq!(code, 0, "worker failed: {err}");
        let n: u64 = out
            .split(", ")
            .find_map(|p| p.strip_suffix(" states sampled"))
            .unwrap_or_else(|| panic!("no summary in {out:?}"))
            .parse()?;
        sampled += n;
    }
    assert_eq!(sampled, total(&m, "remote_states"));
    Ok(())
}

#[test]
fn a_worker_that_dies_mid_request_loses_no_state() -> Result<()> {
    let _g = serial();
    let (_, base, local) = shared();
    let (cfg, port) = cluster_config("dying-worker", 1, 60.0);
    // It answers one request, then exits without answering the next, as a crashed machine would.
    let w = worker(port, "test-cookie", &["--exit-after-samples", "1"]);
    let summary = run(&cfg, TrainOptions::default())?;
    let (code, _, _) = finish(w);
    assert_eq!(code, 3, "the worker should have died in its test hook");
    assert_eq!(summary.steps, cfg.train.steps);
    let m = metrics(&cfg);
    assert_eq!(total(&m, "states_reissued"), summary.reissued as u64);
    assert_eq!(summary.reissued, 3, "the dead worker's half of step 2");
    assert_eq!(
        total(&m, "remote_states"),
        3,
        "only its first answer counts"
    );
    let seen = learned_states(&m);
    let expected: Vec<u64> = (0..base.train.steps * base.rollout.states_per_step as u64).collect();
    assert_eq!(seen, expected, "a state was lost or learned twice");
    assert_eq!(without_placement(m), without_placement(local.clone()));
    Ok(())
}

#[test]
fn a_wrong_cookie_or_a_missing_worker_is_refused_with_the_reason() -> Result<()> {
    let _g = serial();
    let (cfg, port) = cluster_config("refused", 1, 3.0);
    let w = worker(port, "not-the-cookie", &[]);
    let e = run(&cfg, TrainOptions::default()).unwrap_err().to_string();
    assert!(
        e.contains("cluster.min_workers = 1") && e.contains("0 joined"),
        "{e}"
    );
    assert!(!cfg.run_dir.join("metrics.jsonl").exists());
    let (code, _, err) = finish(w);
    assert_ne!(code, 0);
    assert!(err.contains("--cookie"), "{err}");
    // Nothing listening at all: the worker gives up after --wait with the address it tried.
    let out = Command::new(env!("CARGO_BIN_EXE_rpt"))
        .args(["worker", "--connect", &format!("127.0.0.1:{}", free_port())])
        .args(["--cookie", "c", "--wait", "0.5"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot reach the run at 127.0.0.1:"), "{err}");
    Ok(())
}
