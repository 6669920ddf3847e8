//! Ctrl-C as a terminal sends it, to the whole foreground process group: the first press finishes the
//! step in progress, writes its checkpoint and exits with status 130 (the reward plug-in, in a group
//! of its own, answers to the end); a second press stops at once and leaves the last checkpoint
//! intact; a sweep never marks a stopped cell done. Every interrupted run then resumes.
//!
//! The press lands while the plug-in is answering a request of a step after the first: it writes a
//! line to a file when a request arrives and answers after the delay read from another file, so the
//! step in progress cannot end before the test has pressed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use common::run_config;
use rpt::config::{Advantage, Config};

const PLUGIN: &str = r#"
import json, sys, time
arrived, delay = sys.argv[1:]
for line in sys.stdin:
    group = json.loads(line)
    with open(arrived, "a") as f:
        f.write("request\n")
    time.sleep(float(open(delay).read()))
    print(json.dumps({"rewards": [float(len(c) % 3) for c in group["completions"]]}), flush=True)
"#;

/// A run's files and its slow reward plug-in.
struct Slow {
    config: PathBuf,
    run_dir: PathBuf,
    arrived: PathBuf,
    delay: PathBuf,
}

impl Slow {
    /// A six-step run of the shared tiny model, checkpointing every step, scored by the plug-in with
    /// `delay` seconds an answer.
    fn new(name: &str, delay: f64, edit: impl FnOnce(&mut Config)) -> Result<Self> {
        let mut cfg = run_config(name);
        let dir = cfg.run_dir.clone();
        let script = dir.join("slow_reward.py");
        std::fs::write(&script, PLUGIN)?;
        let slow = Slow {
            config: dir.join("run.toml"),
            run_dir: dir.clone(),
            arrived: dir.join("arrived"),
            delay: dir.join("delay"),
        };
        slow.set_delay(delay)?;
        cfg.reward.variant = "command".into();
        cfg.reward.command = [&script, &slow.arrived, &slow.delay]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        cfg.reward.command.insert(0, "python3".into());
        cfg.grpo.advantage = Advantage::Grpo;
        cfg.train.steps = 6;
        cfg.train.checkpoint_every = 1;
        cfg.train.eval_before_after = false;
        edit(&mut cfg);
        std::fs::write(&slow.config, toml::to_string(&cfg)?)?;
        Ok(slow)
    }

    /// Resumes the run with answers at once, to its last step: every step's metrics once.
    fn resume_to_the_end(&self) -> Result<()> {
        self.set_delay(0.0)?;
        let config = self.config.display().to_string();
        let (ok, _, err) = common::rpt_cli(&["train", "--config", &config, "--resume"], &[])?;
        assert!(ok, "{err}");
        assert_eq!(steps(&metrics(&self.run_dir)?), (1..=6).collect::<Vec<_>>());
        Ok(())
    }

    fn set_delay(&self, seconds: f64) -> Result<()> {
        Ok(std::fs::write(&self.delay, seconds.to_string())?)
    }

    fn requests(&self) -> usize {
        std::fs::read_to_string(&self.arrived).map_or(0, |t| t.lines().count())
    }

    /// Waits for a checkpoint, then for the plug-in to take a request of a later step.
    fn wait_mid_step(&self, run_dir: &Path, child: &mut Child) -> Result<()> {
        wait(child, "a first checkpoint", || {
            rpt::checkpoint::latest(run_dir).ok().flatten().is_some()
        })?;
        let seen = self.requests();
        wait(child, "a request of a later step", || {
            self.requests() > seen
        })
    }
}

/// `rpt` in a process group of its own, as a shell starts a foreground job; output into files.
fn start(args: &[&str], out: &Path) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    Ok(Command::new(env!("CARGO_BIN_EXE_rpt"))
        .args(args)
        .env("RPT_LOG", "error")
        .process_group(0)
        .stdout(std::fs::File::create(out.join("stdout"))?)
        .stderr(std::fs::File::create(out.join("stderr"))?)
        .stdin(Stdio::null())
        .spawn()?)
}

/// Ctrl-C as a terminal sends it: SIGINT to every process of the foreground group (bash's `kill`).
fn press(child: &Child) -> Result<()> {
    let kill = format!("kill -INT -- -{}", child.id());
    if !Command::new("bash").args(["-c", &kill]).status()?.success() {
        bail!("`{kill}` failed");
    }
    Ok(())
}

fn wait(child: &mut Child, what: &str, done: impl Fn() -> bool) -> Result<()> {
    let t0 = Instant::now();
    while !done() {
        if let Some(status) = child.try_wait()? {
            bail!("rpt ended ({status}) before {what}");
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            bail!("no {what} within 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The exit status, stdout and stderr of a run that has been pressed.
fn finish(mut child: Child, out: &Path) -> Result<(Option<i32>, String, String)> {
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            bail!("rpt did not stop within 300 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((
        status.code(),
        std::fs::read_to_string(out.join("stdout"))?,
        std::fs::read_to_string(out.join("stderr"))?,
    ))
}

fn checkpoint_step(run_dir: &Path) -> Result<u64> {
    let dir = rpt::checkpoint::latest(run_dir)?.expect("a checkpoint");
    Ok(rpt::checkpoint::read_state(&dir)?.step)
}

fn metrics(run_dir: &Path) -> Result<Vec<serde_json::Value>> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn steps(m: &[serde_json::Value]) -> Vec<u64> {
    m.iter().map(|l| l["step"].as_u64().unwrap()).collect()
}

#[test]
fn the_first_ctrl_c_finishes_the_step_checkpoints_it_and_exits_130() -> Result<()> {
    let slow = Slow::new("ctrl-c-once", 1.0, |c| c.train.eval_before_after = true)?;
    let config = slow.config.display().to_string();
    let mut child = start(&["train", "--config", &config], &slow.run_dir)?;
    slow.wait_mid_step(&slow.run_dir, &mut child)?;
    press(&child)?;
    let (code, stdout, stderr) = finish(child, &slow.run_dir)?;
    assert_eq!(code, Some(130), "{stderr}");
    let m = metrics(&slow.run_dir)?;
    let last = *steps(&m).last().unwrap();
    assert!((2..6).contains(&last), "stopped after step {last}");
    assert_eq!(steps(&m), (1..=last).collect::<Vec<_>>());
    assert_eq!(checkpoint_step(&slow.run_dir)?, last);
    assert!(
        stderr.contains(&format!("stopped by Ctrl-C after step {last} of 6"))
            && stderr.contains("--resume"),
        "{stderr}"
    );
    // The press reached the plug-in's group too if it shared rpt's: it would have died mid-answer
    // and its work been handed out again.
    assert!(
        m.iter().all(|l| l["states_reissued"] == 0),
        "a plug-in was restarted: {stderr}"
    );
    assert!(stdout.contains("before training"), "{stdout}");
    assert!(
        !stdout.contains("after training"),
        "a stopped run evaluated: {stdout}"
    );

    slow.resume_to_the_end()
}

#[test]
fn a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes() -> Result<()> {
    let slow = Slow::new("ctrl-c-twice", 3.0, |_| {})?;
    let config = slow.config.display().to_string();
    let mut child = start(&["train", "--config", &config], &slow.run_dir)?;
    slow.wait_mid_step(&slow.run_dir, &mut child)?;
    let before = checkpoint_step(&slow.run_dir)?;
    press(&child)?;
    std::thread::sleep(Duration::from_millis(300));
    press(&child)?;
    let (code, _, stderr) = finish(child, &slow.run_dir)?;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("Ctrl-C again: stopped at once") && stderr.contains("is intact"),
        "{stderr}"
    );
    // The plug-in was still answering the step in progress: nothing of it was written.
    assert_eq!(checkpoint_step(&slow.run_dir)?, before);
    assert_eq!(*steps(&metrics(&slow.run_dir)?).last().unwrap(), before);

    slow.resume_to_the_end()
}

#[test]
fn a_sweep_stopped_by_ctrl_c_does_not_mark_its_cell_done() -> Result<()> {
    let slow = Slow::new("ctrl-c-sweep", 1.0, |_| {})?;
    let out = slow.run_dir.join("cells");
    let sweep = slow.run_dir.join("sweep.toml");
    std::fs::write(
        &sweep,
        format!(
            "base = \"run.toml\"\nout = {:?}\nseeds = [5]\n[grid]\n\"optim.lr\" = [0.001, 0.002]\n",
            out.display().to_string()
        ),
    )?;
    let file = sweep.display().to_string();
    let mut child = start(&["sweep", &file], &slow.run_dir)?;
    let cells = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&out)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.is_dir());
        v
    };
    wait(&mut child, "the first cell", || !cells().is_empty())?;
    let first = cells().remove(0);
    slow.wait_mid_step(&first, &mut child)?;
    press(&child)?;
    let (code, stdout, stderr) = finish(child, &slow.run_dir)?;
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("not marked done"), "{stderr}");
    assert!(!first.join(rpt::pipeline::sweep::DONE).exists());
    assert_eq!(cells(), vec![first.clone()], "the next cell started");
    assert!(!stdout.contains("report:"), "{stdout}");

    slow.set_delay(0.0)?;
    let (ok, stdout, err) = common::rpt_cli(&["sweep", &file], &[])?;
    assert!(ok, "{err}");
    assert!(stdout.contains("(resuming)"), "{stdout}");
    assert_eq!(steps(&metrics(&first)?), (1..=6).collect::<Vec<_>>());
    assert!(first.join(rpt::pipeline::sweep::DONE).exists());
    Ok(())
}
