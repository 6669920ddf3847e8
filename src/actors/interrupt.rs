//! Ctrl-C. The first press during a run asks the supervisor to finish the step in progress, write a
//! checkpoint and stop. A second press ends the process at once with exit status 130: the step in
//! progress is lost, and the last checkpoint (written into a temporary directory and renamed) is
//! intact. Outside a run (the evaluation after training, between the cells of a sweep), Ctrl-C ends
//! the process at once, as it does before any handler is installed.
//!
//! The listener is a thread of its own with its own small runtime, installed by the first run and
//! kept for the life of the process. It cannot live on the run's runtime: once tokio has registered
//! a handler for a signal it keeps it until the process ends, so after that runtime was gone every
//! later Ctrl-C would have been swallowed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// A run in progress, as the listener sees it.
struct Watch {
    id: u64,
    /// Asks the run to finish its step and stop.
    stop: Box<dyn Fn() + Send>,
    run_dir: PathBuf,
}

/// The runs in progress (a program using the library may run several at once), and whether the
/// first press has been handled.
struct Watched {
    runs: Vec<Watch>,
    pressed: bool,
    next_id: u64,
}

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    runs: vec![],
    pressed: false,
    next_id: 0,
});

fn watched() -> MutexGuard<'static, Watched> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listener is watching a run until this is dropped.
pub struct DuringRun(u64);

impl Drop for DuringRun {
    fn drop(&mut self) {
        let mut w = watched();
        w.runs.retain(|r| r.id != self.0);
        if w.runs.is_empty() {
            w.pressed = false;
        }
    }
}

/// Hands Ctrl-C to the run writing into `run_dir`: the first press calls `stop`.
pub fn during_run(run_dir: &Path, stop: impl Fn() + Send + 'static) -> DuringRun {
    install();
    let mut w = watched();
    let id = w.next_id;
    w.next_id += 1;
    w.runs.push(Watch {
        id,
        stop: Box::new(stop),
        run_dir: run_dir.to_path_buf(),
    });
    DuringRun(id)
}

/// Starts the listener once, and returns when it is listening (a press after a run has started is
/// never lost to the default action).
fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let (ready, listening) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("ctrl-c".into())
            .spawn(move || listen(ready));
        match spawned {
            Ok(_) => {
                let _ = listening.recv();
            }
            Err(e) => tracing::warn!("Ctrl-C cannot be handled ({e}): it ends the process at once"),
        }
    });
}

fn listen(ready: std::sync::mpsc::Sender<()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build();
    let Ok(rt) = rt else {
        let _ = ready.send(());
        return;
    };
    rt.block_on(async move {
        let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt());
        let _ = ready.send(());
        let Ok(mut presses) = signal else { return };
        while presses.recv().await.is_some() {
            pressed();
        }
    });
}

fn pressed() {
    let mut w = watched();
    if w.runs.is_empty() {
        eprintln!("\nCtrl-C: stopped");
        std::process::exit(130);
    }
    if w.pressed {
        for r in &w.runs {
            eprintln!("\n{}", second_press(&r.run_dir));
        }
        std::process::exit(130);
    }
    w.pressed = true;
    tracing::warn!(
        "Ctrl-C: finishing the step in progress, writing a checkpoint, then stopping (Ctrl-C \
         again stops at once and loses that step)"
    );
    for r in &w.runs {
        (r.stop)();
    }
}

/// What a second press says: the step is lost, and which checkpoint a resume starts from.
fn second_press(run_dir: &Path) -> String {
    format!(
        "Ctrl-C again: stopped at once; the step in progress is lost, {}",
        crate::checkpoint::resume_from(run_dir)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_press_names_the_checkpoint_a_resume_starts_from() -> crate::Result<()> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let none = second_press(dir.path());
        assert!(none.contains("no checkpoint had been written"), "{none}");
        let root = crate::checkpoint::checkpoints_dir(dir.path());
        std::fs::create_dir_all(root.join("step-000002")).expect("a directory");
        crate::model::write_atomic(&root.join("latest"), b"step-000002")?;
        let some = second_press(dir.path());
        assert!(
            some.contains("step-000002") && some.contains("--resume"),
            "{some}"
        );
        Ok(())
    }
}
