//! What the schedule remembers of failures, to stop a run whose faults repeat instead of restarting
//! forever (a deterministic fault, such as a length the model cannot take, fails the same way every
//! time).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Restarts allowed within [`RESTART_WINDOW`] before the run stops: a fault that keeps coming back is
/// not a passing one.
pub const MAX_RESTARTS: usize = 8;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// What the schedule remembers of failures, to stop a run whose faults repeat instead of restarting
/// forever: the same state (or group) failing twice, or too many restarts in a window.
#[derive(Default)]
pub struct Faults {
    /// State index → failures of the actor it was assigned to.
    per_state: HashMap<u64, u32>,
    recent: VecDeque<Instant>,
    first: Option<String>,
}

impl Faults {
    /// Records a failure of an actor that held `states`; `Some(reason)` when the run must stop.
    pub fn record(&mut self, who: &str, why: &str, states: &[u64]) -> Option<String> {
        let first = self
            .first
            .get_or_insert_with(|| format!("{who}: {why}"))
            .clone();
        let now = Instant::now();
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.recent.pop_front();
        }
        for &k in states {
            let n = self.per_state.entry(k).or_default();
            *n += 1;
            if *n >= 2 {
                return Some(format!(
                    "state {k} failed twice, so the fault is not a passing one; the first error: {first}"
                ));
            }
        }
        if self.recent.len() > MAX_RESTARTS {
            return Some(format!(
                "{} restarts within {} s; the first error: {first}",
                self.recent.len(),
                RESTART_WINDOW.as_secs()
            ));
        }
        None
    }
}
