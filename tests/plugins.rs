//! Plug-ins over a pipe: the reward plug-in scores like the built-in variant, a run with it matches the
//! built-in run, and each fault (crash, hang, malformed line, wrong count, NaN) is re-issued or stops
//! the run cleanly with nothing already written lost. The environment plug-in serves documents like the
//! built-in corpus and survives a restart.

mod common;

use std::path::{Path, PathBuf};

use anyhow::Result;
use common::{metrics, run, run_config, without_placement, without_timing};
use rpt::config::{Advantage, Config};
use rpt::pipeline::train::TrainOptions;
use rpt::plugin::PluginSpec;
use rpt::reward::{Case, CommandReward, PrefixMatch, RewardFn};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn example() -> String {
    root()
        .join("examples/reward_prefix_match.py")
        .display()
        .to_string()
}

/// Cases with every shape the parser knows: nested braces, several answers, unclosed, no `</think>`,
/// invalid UTF-8, a prefix that ends inside a token, an empty answer; and a seeded random batch of
/// fragment soups.
fn cases() -> Vec<(Vec<u8>, Vec<u8>, Vec<usize>)> {
    let cont = b"x^{2} + 1 = 5".to_vec();
    let bounds = vec![1, 2, 4, 5, 7, 9, 13];
    let mut out: Vec<(Vec<u8>, Vec<u8>, Vec<usize>)> = [
        &b"think</think> \\boxed{x}"[..],
        b"</think>\\boxed{x^{2}}",
        b"</think>\\boxed{x^{2} +}",
        b"</think>\\boxed{x^{2}",
        b"</think>\\boxed{x} \\boxed{x^}",
        b"</think>\\boxed{y}\\boxed{x^{2} }",
        b"no end \\boxed{x}",
        b"</think> nothing boxed",
        b"</think>\\boxed{}",
        b"\xff\xfe</think>\\boxed{x^{\xff}",
        b"</think></think>\\boxed{x^{2} + 1 = 5}",
        b"\\boxed{x}</think>",
    ]
    .iter()
    .map(|c| (c.to_vec(), cont.clone(), bounds.clone()))
    .collect();
    let fragments: [&[u8]; 10] = [
        b"</think>",
        b"\\boxed{",
        b"{",
        b"}",
        b"x",
        b"^",
        b"2",
        b" + 1",
        b"\xc3\xa9",
        b"\xff",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        let mut c = vec![];
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        for k in 0..(seed >> 60) as usize + 1 {
            let pick = (seed >> (4 * k % 56)) as usize % fragments.len();
            c.extend_from_slice(fragments[pick]);
        }
        out.push((c, cont.clone(), bounds.clone()));
    }
    out
}

#[test]
fn the_example_plugin_scores_every_case_like_prefix_match() -> Result<()> {
    let plugin = CommandReward::new(PluginSpec {
        command: vec!["python3".into(), example()],
        timeout: std::time::Duration::from_secs(30),
        role: "reward",
    });
    let cases = cases();
    // Groups of 8, as a run would send them.
    for chunk in cases.chunks(8) {
        let group: Vec<Case> = chunk
            .iter()
            .map(|(c, t, b)| Case {
                context: b"Solve for x: ",
                completion: c,
                continuation: t,
                boundaries: b,
                ..Case::default()
            })
            .collect();
        let want = PrefixMatch.score_group(&group)?;
        let got = plugin.score_group(&group)?;
        assert_eq!(
            got,
            want,
            "{:?}",
            chunk
                .iter()
                .map(|c| String::from_utf8_lossy(&c.0))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// A config whose reward is the plug-in `script` with `args`.
fn with_plugin(mut cfg: Config, script: &str, args: &[&str]) -> Config {
    cfg.reward.variant = "command".into();
    cfg.reward.command = [
        "python3".to_string(),
        root().join(script).display().to_string(),
    ]
    .into_iter()
    .chain(args.iter().map(|a| a.to_string()))
    .collect();
    cfg
}

/// `prefix_match` with GRPO advantages, the plug-in's built-in twin.
fn prefix_match_config(name: &str) -> Config {
    let mut cfg = run_config(name);
    cfg.reward.variant = "prefix_match".into();
    cfg.grpo.advantage = Advantage::Grpo;
    cfg
}

fn comparable(m: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    without_placement(m)
        .into_iter()
        .map(|mut l| {
            l.as_object_mut().unwrap().remove("reward_variant");
            l
        })
        .collect()
}

#[test]
fn a_run_with_the_reward_plugin_matches_the_builtin_variant() -> Result<()> {
    let builtin = prefix_match_config("plug-builtin");
    run(&builtin, TrainOptions::default())?;
    let plugged = with_plugin(
        prefix_match_config("plug-command"),
        "examples/reward_prefix_match.py",
        &[],
    );
    run(&plugged, TrainOptions::default())?;
    let (a, b) = (metrics(&builtin), metrics(&plugged));
    assert_eq!(b[0]["reward_variant"], "command");
    assert!(b.iter().all(|l| l["states_reissued"] == 0));
    assert_eq!(comparable(a), comparable(b));
    Ok(())
}

#[test]
fn a_plugin_that_fails_once_is_restarted_and_its_groups_reissued() -> Result<()> {
    let clean = prefix_match_config("plug-clean");
    run(&clean, TrainOptions::default())?;
    for fault in ["crash", "hang", "malformed", "count", "nan"] {
        let name = format!("plug-once-{fault}");
        let scratch = tempfile::tempdir()?;
        let state = scratch.path().join("faults.json");
        let mut cfg = with_plugin(
            prefix_match_config(&name),
            "tests/plugins/reward_faults.py",
            &[fault, "4", &state.display().to_string(), "once"],
        );
        cfg.reward.timeout_s = 2.0;
        run(&cfg, TrainOptions::default())?;
        let m = metrics(&cfg);
        let reissued: u64 = m
            .iter()
            .map(|l| l["states_reissued"].as_u64().unwrap())
            .sum();
        assert!(reissued >= 1, "{fault}: nothing re-issued");
        // The same run as without the fault: a re-issued group is scored the same.
        assert_eq!(comparable(m), comparable(metrics(&clean)), "{fault}");
    }
    Ok(())
}

#[test]
fn a_plugin_that_keeps_failing_stops_the_run_with_its_stderr_and_line_and_the_checkpoint_intact()
-> Result<()> {
    for (fault, says) in [
        ("malformed", "rewards: "),
        ("count", "rewards for a group of 4 completions"),
        ("nan", "NaN and Infinity are not numbers in JSON"),
        ("crash", "exited"),
    ] {
        let name = format!("plug-always-{fault}");
        let scratch = tempfile::tempdir()?;
        let state = scratch.path().join("faults.json");
        // Steps of 3 groups, a checkpoint every 2 steps: the fault comes in step 3.
        let cfg = with_plugin(
            prefix_match_config(&name),
            "tests/plugins/reward_faults.py",
            &[fault, "7", &state.display().to_string()],
        );
        let e = format!("{:#}", run(&cfg, TrainOptions::default()).unwrap_err());
        assert!(
            e.contains("the run stopped") && e.contains("answer line") && e.contains(says),
            "{fault}: {e}"
        );
        assert!(
            e.contains("injecting"),
            "{fault}: the stderr tail is not quoted: {e}"
        );
        // What was written before stays: two steps of metrics and the step-2 checkpoint, from which a
        // run with a working plug-in resumes.
        let m = metrics(&cfg);
        assert_eq!(m.len(), 2, "{fault}");
        let latest = rpt::checkpoint::latest(&cfg.run_dir)?.expect("the step-2 checkpoint");
        rpt::model::Checkpoint::load(&latest, &rpt::model::Device::Cpu)?;
        let fixed = with_plugin(
            prefix_match_config(&name),
            "examples/reward_prefix_match.py",
            &[],
        );
        let fixed = Config {
            run_dir: cfg.run_dir.clone(),
            ..fixed
        };
        // The user fixed the plug-in: a changed `reward.command` is a config change they allow.
        let resume = TrainOptions {
            resume: true,
            allow_config_change: true,
            ..Default::default()
        };
        run(&fixed, resume)?;
        assert_eq!(metrics(&fixed).len(), 4, "{fault}");
    }
    Ok(())
}

#[test]
fn a_reward_out_of_range_or_not_a_number_names_the_line() {
    for (answer, says) in [
        ("[1e7, 0, 0]", "reward 0 is 10000000.0"),
        ("[0, -2e6, 0]", "reward 1 is -2000000.0"),
        ("[0, \"x\", 0]", "reward 1 is \"x\""),
        ("[0, 0]", "2 rewards for a group of 3"),
        ("[0, Infinity, 0]", "NaN and Infinity are not numbers"),
    ] {
        let script = format!(
            "import sys\nfor l in sys.stdin:\n  print('{{\"rewards\": {answer}}}', flush=True)"
        );
        let plugin = CommandReward::new(PluginSpec {
            command: vec!["python3".into(), "-c".into(), script],
            timeout: std::time::Duration::from_secs(30),
            role: "reward",
        });
        let group: Vec<Case> = (0..3)
            .map(|_| Case {
                completion: b"</think>\\boxed{x}",
                continuation: b"x",
                boundaries: &[1],
                ..Case::default()
            })
            .collect();
        let e = plugin.score_group(&group).unwrap_err().to_string();
        assert!(
            e.contains("answer line 1") && e.contains(says),
            "{answer}: {e}"
        );
    }
}

#[test]
fn a_bad_plugin_config_is_refused_before_anything_runs() {
    let text = "[reward]\nvariant = \"command\"\n";
    let e = Config::parse(text, Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reward.command") && e.contains("python3"), "{e}");
    let text =
        "[reward]\nvariant = \"command\"\ncommand = [\"python3\", \"x.py\"]\ntimeout_s = 0\n";
    let e = Config::parse(text, Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("reward.timeout_s"), "{e}");
}

#[test]
fn rpt_reward_checks_a_plugin_on_cases() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cases = dir.path().join("cases.jsonl");
    std::fs::write(
        &cases,
        concat!(
            "{\"completion\": \"a</think> \\\\boxed{ 4}\", \"continuation\": \" 4 is it\", \"group\": 1}\n",
            "{\"completion\": \"a</think> \\\\boxed{ 5}\", \"continuation\": \" 4 is it\", \"group\": 1}\n",
            "{\"completion\": \"no answer\", \"continuation\": \" 4 is it\", \"group\": 1}\n",
        ),
    )?;
    let model = root()
        .join("tests/fixtures/hf-parity/qwen2")
        .display()
        .to_string();
    let input = cases.display().to_string();
    let score = |variant: &str, command: &str| {
        let mut args = vec![
            "reward",
            "--model",
            &model,
            "--variant",
            variant,
            "--input",
            &input,
            "--json",
        ];
        if !command.is_empty() {
            args.extend(["--command", command]);
        }
        common::rpt_cli(&args, &[])
    };
    let (ok, builtin, err) = score("prefix_match", "")?;
    assert!(ok, "{err}");
    let command = format!("python3 {}", example());
    let (ok, plugged, err) = score("command", &command)?;
    assert!(ok, "{err}");
    let rewards = |out: &str| -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reward"].clone())
            .collect()
    };
    assert_eq!(rewards(&plugged), rewards(&builtin));
    assert_eq!(rewards(&builtin)[0], 1.0);
    let (ok, _, err) = score("command", "")?;
    assert!(!ok && err.contains("--command"), "{err}");
    let (ok, _, err) = score("command", "python3 /no/such/reward.py")?;
    assert!(!ok && err.contains("reward plug-in"), "{err}");
    Ok(())
}

/// The built-in corpus of `cfg`, written as a JSONL file for the environment plug-in to serve.
fn builtin_as_jsonl(cfg: &Config, path: &Path) -> Result<()> {
    let texts = rpt::pipeline::load_texts(cfg)?;
    let lines: Vec<String> = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n")?;
    Ok(())
}

#[test]
fn an_environment_plugin_serving_the_builtin_documents_matches_the_builtin_run_and_resumes()
-> Result<()> {
    let builtin = prefix_match_config("env-builtin");
    run(&builtin, TrainOptions::default())?;
    let docs = builtin.run_dir.with_file_name("env-docs.jsonl");
    builtin_as_jsonl(&builtin, &docs)?;
    let mut cfg = prefix_match_config("env-plugin");
    cfg.corpus.kind = rpt::config::CorpusKind::Command;
    cfg.corpus.command = vec![
        "python3".into(),
        root()
            .join("examples/environment_documents.py")
            .display()
            .to_string(),
        docs.display().to_string(),
    ];
    assert_eq!(
        rpt::pipeline::load_texts(&cfg)?,
        rpt::pipeline::load_texts(&builtin)?
    );
    // Two steps, then a resume to four: the documents come from a fresh plug-in process.
    common::run_then_resume(&mut cfg, 2, 4)?;
    assert_eq!(
        without_timing(metrics(&cfg)),
        without_timing(metrics(&builtin))
    );
    Ok(())
}

#[test]
fn a_failing_environment_plugin_is_retried_once_then_named() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let docs = dir.path().join("docs.jsonl");
    std::fs::write(
        &docs,
        "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n",
    )?;
    let mut cfg = Config::default();
    cfg.corpus.kind = rpt::config::CorpusKind::Command;
    cfg.corpus.timeout_s = 5.0;
    let script = root()
        .join("examples/environment_documents.py")
        .display()
        .to_string();
    cfg.corpus.command = vec!["python3".into(), script.clone(), docs.display().to_string()];
    assert_eq!(rpt::pipeline::load_texts(&cfg)?, ["one", "two", "three"]);
    // A plug-in that crashes on its first request once: restarted, asked again, all documents read.
    let once = dir.path().join("crashed");
    let crash_once = format!(
        "import os,sys\nif not os.path.exists({once:?}):\n  open({once:?},'w').close(); sys.stdin.readline(); print('env: boom', file=sys.stderr); sys.exit(5)\nsys.argv=['x',{docs:?}]\nexec(open({script:?}).read())",
        once = once.display().to_string(),
        docs = docs.display().to_string(),
    );
    cfg.corpus.command = vec!["python3".into(), "-c".into(), crash_once];
    assert_eq!(rpt::pipeline::load_texts(&cfg)?.len(), 3);
    // A plug-in that answers the wrong thing every time: named, with the line and its stderr.
    let wrong = "import sys\nfor l in sys.stdin:\n  print('env: confused', file=sys.stderr, flush=True)\n  print('{\"txt\": 1}', flush=True)";
    cfg.corpus.command = vec!["python3".into(), "-c".into(), wrong.into()];
    let e = rpt::pipeline::load_texts(&cfg).unwrap_err().to_string();
    assert!(
        e.contains("document 0 failed twice")
            && e.contains("{\"txt\":1}")
            && e.contains("env: confused"),
        "{e}"
    );
    let e = Config::parse("[corpus]\nkind = \"command\"\n", Path::new("run.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("corpus.command"), "{e}");
    Ok(())
}
