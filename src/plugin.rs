//! A plug-in process spoken to over a pipe: one JSON line in, one JSON line out. The reward plug-in
//! (`reward.variant = "command"`) and the environment plug-in (`corpus.kind = "command"`) share it.
//!
//! A plug-in that exits, hangs past its timeout, or answers a line that is not what was asked for is
//! an error that quotes the bad line and the tail of the process's stderr, and the process is killed:
//! the caller starts a fresh one for the next request. A plug-in runs in a process group of its own, so
//! that a terminal's Ctrl-C reaches `rpt` alone, which finishes its step (and the plug-in's answers)
//! before it stops; a plug-in ends when its stdin closes. Written by hand because it is a child process,
//! two reader threads and a channel; no crate adds anything to that.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How much of a plug-in's stderr an error quotes.
const STDERR_LINES: usize = 20;
/// How much of a bad answer line an error quotes.
const QUOTE_BYTES: usize = 400;

/// What starts a plug-in, and how long one answer may take.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginSpec {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    pub timeout: Duration,
    /// Names the plug-in in errors (`reward` or `environment`).
    pub role: &'static str,
}

impl PluginSpec {
    /// A spec from a config's `command` and `timeout_s` (validated there: a program, a positive
    /// finite timeout).
    pub fn new(command: &[String], timeout_s: f64, role: &'static str) -> Self {
        PluginSpec {
            command: command.to_vec(),
            timeout: Duration::from_secs_f64(timeout_s),
            role,
        }
    }

    pub fn shown(&self) -> String {
        self.command.join(" ")
    }
}

/// A running plug-in.
pub struct Plugin {
    spec: PluginSpec,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<std::io::Result<String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Answer lines read so far (errors name the line by this number).
    answered: usize,
}

impl Plugin {
    pub fn start(spec: &PluginSpec) -> Result<Self, String> {
        let (program, args) = spec
            .command
            .split_first()
            .ok_or_else(|| format!("the {} plug-in's command is empty", spec.role))?;
        let mut child = Command::new(program)
            .args(args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                format!(
                    "could not start the {} plug-in `{}`: {e}",
                    spec.role,
                    spec.shown()
                )
            })?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let end = line.is_err();
                if tx.send(line).is_err() || end {
                    break;
                }
            }
        });
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let sink = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut t = sink.lock().expect("stderr tail");
                if t.len() == STDERR_LINES {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Plugin {
            spec: spec.clone(),
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: tail,
            answered: 0,
        })
    }

    /// Sends one request line and returns the answer line, parsed as JSON, with its number.
    pub fn ask(
        &mut self,
        request: &serde_json::Value,
    ) -> Result<(usize, serde_json::Value), String> {
        let mut text = request.to_string();
        text.push('\n');
        let sent = match self.stdin.as_mut() {
            Some(s) => s
                .write_all(text.as_bytes())
                .and_then(|_| s.flush())
                .map_err(|e| e.to_string()),
            None => Err("its stdin is closed".into()),
        };
        if let Err(e) = sent {
            return Err(self.failure(&format!("could not write to it ({e})"), None));
        }
        let line = match self.lines.recv_timeout(self.spec.timeout) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => {
                return Err(self.failure(&format!("its output is not UTF-8 text: {e}"), None));
            }
            Err(RecvTimeoutError::Timeout) => {
                let why = format!(
                    "no answer within timeout_s = {}",
                    self.spec.timeout.as_secs_f64()
                );
                return Err(self.failure(&why, None));
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(self.failure(&format!("it exited ({status}) before answering"), None));
            }
        };
        self.answered += 1;
        match serde_json::from_str(&line) {
            Ok(v) => Ok((self.answered, v)),
            Err(e) => {
                let why = if ["NaN", "Infinity"].iter().any(|w| line.contains(w)) {
                    format!(
                        "answer is not JSON ({e}): NaN and Infinity are not numbers in JSON, and every value must be finite"
                    )
                } else {
                    format!("answer is not JSON ({e})")
                };
                Err(self.failure(&why, Some(&line)))
            }
        }
    }

    /// An error about answer line `number` (`line` quoted), with the stderr tail.
    pub fn bad_answer(&self, number: usize, why: &str, line: &serde_json::Value) -> String {
        self.failure_at(number, why, Some(&line.to_string()))
    }

    /// An error about the answer line awaited now (the next one, or the one just read).
    fn failure(&self, why: &str, line: Option<&str>) -> String {
        let number = if line.is_some() {
            self.answered
        } else {
            self.answered + 1
        };
        self.failure_at(number, why, line)
    }

    fn failure_at(&self, number: usize, why: &str, line: Option<&str>) -> String {
        let mut msg = format!(
            "{} plug-in `{}`, answer line {number}: {why}",
            self.spec.role,
            self.spec.shown()
        );
        if let Some(line) = line {
            let cut = line
                .char_indices()
                .map(|(i, _)| i)
                .take_while(|&i| i <= QUOTE_BYTES)
                .last()
                .unwrap_or(0);
            let quoted = if line.len() > QUOTE_BYTES {
                format!("{}…", &line[..cut])
            } else {
                line.to_string()
            };
            msg.push_str(&format!("; the line: {quoted}"));
        }
        // Give the stderr reader a moment to catch what the process printed as it failed.
        std::thread::sleep(Duration::from_millis(50));
        let tail = self.stderr.lock().expect("stderr tail");
        if tail.is_empty() {
            msg.push_str("; its stderr was empty");
        } else {
            let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
            msg.push_str(&format!("; its stderr ends:\n  {}", lines.join("\n  ")));
        }
        msg
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Plug-in processes kept for reuse: each request takes an idle one (or starts one) and gives it
/// back when it answered well. A process that failed is dropped (killed), so the next request starts
/// a fresh one. As many run as requests are in flight at once: one per verifier.
pub struct Pool {
    spec: PluginSpec,
    idle: Mutex<Vec<Plugin>>,
}

impl Pool {
    pub fn new(spec: PluginSpec) -> Self {
        Pool {
            spec,
            idle: Mutex::new(vec![]),
        }
    }

    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// Runs `f` with a plug-in; the plug-in goes back to the pool only if `f` succeeded.
    pub fn with<T>(&self, f: impl FnOnce(&mut Plugin) -> Result<T, String>) -> Result<T, String> {
        let taken = self.idle.lock().expect("plug-in pool").pop();
        let mut p = match taken {
            Some(p) => p,
            None => Plugin::start(&self.spec)?,
        };
        let out = f(&mut p)?;
        self.idle.lock().expect("plug-in pool").push(p);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(script: &str, timeout_ms: u64) -> PluginSpec {
        PluginSpec {
            command: vec!["python3".into(), "-c".into(), script.into()],
            timeout: Duration::from_millis(timeout_ms),
            role: "reward",
        }
    }

    #[test]
    fn answers_and_failures() {
        let echo = "import sys,json\nfor l in sys.stdin:\n  print(json.dumps({'x': json.loads(l)['x'] + 1}), flush=True)";
        let mut p = Plugin::start(&spec(echo, 5000)).unwrap();
        let (n, v) = p.ask(&serde_json::json!({"x": 1})).unwrap();
        assert_eq!((n, v["x"].as_i64()), (1, Some(2)));
        let (n, _) = p.ask(&serde_json::json!({"x": 2})).unwrap();
        assert_eq!(n, 2);

        let dies = "import sys\nsys.stdin.readline()\nprint('boom: out of cheese', file=sys.stderr)\nsys.exit(3)";
        let e = Plugin::start(&spec(dies, 5000))
            .unwrap()
            .ask(&serde_json::json!({}))
            .unwrap_err();
        assert!(e.contains("exited") && e.contains("out of cheese"), "{e}");

        let hangs = "import sys,time\nsys.stdin.readline()\ntime.sleep(30)";
        let e = Plugin::start(&spec(hangs, 300))
            .unwrap()
            .ask(&serde_json::json!({}))
            .unwrap_err();
        assert!(e.contains("timeout_s = 0.3"), "{e}");

        let garbage = "import sys\nsys.stdin.readline()\nprint('rewards: 1, 0', flush=True)";
        let e = Plugin::start(&spec(garbage, 5000))
            .unwrap()
            .ask(&serde_json::json!({}))
            .unwrap_err();
        assert!(
            e.contains("answer line 1") && e.contains("rewards: 1, 0"),
            "{e}"
        );

        let e = Plugin::start(&PluginSpec {
            command: vec!["/no/such/program".into()],
            ..spec("", 1)
        })
        .err()
        .unwrap();
        assert!(e.contains("/no/such/program"), "{e}");
    }
}
