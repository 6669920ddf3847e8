//! The schedule of a run as a plain struct: which states go to which policy, when a step is launched,
//! what is re-issued after a failure, when the learner gets a batch, and which weight versions are kept.
//! The supervisor forwards every event here and carries out the [`Cmd`]s that come back; nothing here
//! knows about actors, so it is tested on its own.
//!
//! Why it is deterministic:
//! - step j's states are the next B in the environment's order (more rounds with dynamic sampling);
//! - step j is launched once step j − 1 is fully scored and at most `max_staleness` updates are pending,
//!   with the newest weights at that moment; that version is the same however threads interleave, since
//!   it only depends on which updates must have finished (credit: no more rollouts in flight than the
//!   learner will take);
//! - the learner gets step j's groups sorted by their index in the environment's order.

use std::collections::BTreeMap;
use std::time::Instant;

use super::faults::Faults;
pub use super::record::{Plan, StepWork, Summary};

use crate::env::State;
use crate::grpo::zero_variance_groups;
use crate::rollout::{Group, ScoredGroup};

/// What the supervisor must do next. `V` is a weight version (the policy and its EMA teacher).
#[derive(Debug)]
pub enum Cmd<V> {
    /// Take `n` states from the environment for `step` and hand them to [`Schedule::took`].
    Take { step: u64, n: usize },
    /// Sample `states` with version `version` on policy `policy`.
    Sample {
        policy: usize,
        step: u64,
        version: u64,
        model: V,
        states: Vec<(u64, State)>,
    },
    /// Score `group` on verifier `verifier` with the version that sampled it.
    Score {
        verifier: usize,
        step: u64,
        group: Group,
        model: V,
    },
    /// Update on `batch` (checkpoint afterwards when `checkpoint`); tell [`Schedule::learning`] the
    /// environment's cursor at this moment.
    Learn {
        step: u64,
        batch: Vec<ScoredGroup>,
        checkpoint: bool,
    },
    /// Write a checkpoint of the current weights: `steps` updates done, data `cursor`.
    Checkpoint { steps: u64, cursor: u64 },
    /// The run is over.
    Finish(Result<Summary, String>),
}

/// A policy the schedule can send states to.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// A worker in another process: not restarted when it fails, its work goes elsewhere.
    remote: bool,
    live: bool,
}

pub struct Schedule<V> {
    plan: Plan,
    policies: Vec<Slot>,
    /// Weight versions still needed: a group is sampled and scored with the version its step was
    /// launched with, whatever the learner has done since.
    versions: BTreeMap<u64, V>,
    steps: BTreeMap<u64, StepWork>,
    updates_done: u64,
    next_launch: u64,
    learner_busy: bool,
    reissued_total: usize,
    /// A stop request moved the run's end before its last step.
    stopped: bool,
    faults: Faults,
}

type Cmds<V> = Vec<Cmd<V>>;

impl<V: Clone> Schedule<V> {
    /// A schedule starting at `plan.start_step` with the weights `first`.
    pub fn new(plan: Plan, first: V) -> Self {
        let start = plan.start_step;
        Schedule {
            versions: BTreeMap::from([(start, first)]),
            policies: vec![],
            steps: BTreeMap::new(),
            updates_done: start,
            next_launch: start,
            learner_busy: false,
            reissued_total: 0,
            stopped: false,
            faults: Faults::default(),
            plan,
        }
    }

    /// Adds a policy (local, or a worker in another process); returns its slot.
    pub fn add_policy(&mut self, remote: bool) -> usize {
        self.policies.push(Slot { remote, live: true });
        self.policies.len() - 1
    }

    pub fn is_remote(&self, policy: usize) -> bool {
        self.policies.get(policy).is_some_and(|p| p.remote)
    }

    fn summary(&self) -> Summary {
        Summary {
            steps: self.updates_done,
            reissued: self.reissued_total,
            stopped: self.stopped,
        }
    }

    /// Starts the run: launches what the credit allows, or finishes at once when nothing is left.
    pub fn start(&mut self) -> Cmds<V> {
        if self.plan.start_step >= self.plan.end_step {
            return vec![Cmd::Finish(Ok(self.summary()))];
        }
        self.launch()
    }

    /// Launches the next step when the credit allows it (see the module doc).
    fn launch(&mut self) -> Cmds<V> {
        let step = self.next_launch;
        let previous_done = step == self.plan.start_step
            || self.steps.get(&(step - 1)).is_none_or(|w| !w.in_flight());
        if step < self.plan.end_step
            && step <= self.updates_done + self.plan.max_staleness
            && previous_done
        {
            let w = StepWork {
                version: self.updates_done,
                started: Some(Instant::now()),
                ..Default::default()
            };
            self.steps.insert(step, w);
            self.next_launch += 1;
            return vec![Cmd::Take {
                step,
                n: self.plan.states_per_step,
            }];
        }
        vec![]
    }

    fn live_policies(&self) -> Vec<usize> {
        (0..self.policies.len())
            .filter(|&i| self.policies[i].live)
            .collect()
    }

    /// The states the environment gave for `step`, split evenly over the live policies.
    pub fn took(&mut self, step: u64, states: Vec<(u64, State)>) -> Result<Cmds<V>, String> {
        if states.is_empty() {
            return Err("the environment has no more states".into());
        }
        let live = self.live_policies();
        if live.is_empty() {
            return Err("no policy is left to sample".into());
        }
        let w = self.steps.get_mut(&step).ok_or("took states for no step")?;
        w.rounds += 1;
        let first = w.rounds == 1;
        let model = self.versions[&w.version].clone();
        let per = states.len().div_ceil(live.len());
        let mut out = vec![];
        for (chunk, &i) in states.chunks(per).zip(&live) {
            for (k, s) in chunk {
                w.sampling.insert(*k, (s.clone(), i));
            }
            out.push(Cmd::Sample {
                policy: i,
                step,
                version: w.version,
                model: model.clone(),
                states: chunk.to_vec(),
            });
        }
        // A launch takes states once; a refill (dynamic sampling) launches nothing.
        if first {
            out.extend(self.launch());
        }
        Ok(out)
    }

    /// Groups sampled by `policy` for `step`: each goes to a verifier (late answers from a policy
    /// whose states were re-issued are ignored).
    pub fn sampled(
        &mut self,
        policy: usize,
        step: u64,
        seconds: f64,
        groups: Vec<Group>,
    ) -> Cmds<V> {
        let remote = self.is_remote(policy);
        let verifiers = self.plan.verifiers as u64;
        let Some(w) = self.steps.get_mut(&step) else {
            return vec![];
        };
        w.rollout_s += seconds;
        let model = self.versions[&w.version].clone();
        let mut out = vec![];
        for g in groups {
            if w.sampling.remove(&g.seq).is_none() {
                continue;
            }
            w.remote_states += remote as usize;
            let v = (g.seq % verifiers) as usize;
            w.scoring.insert(g.seq, (g.clone(), v));
            out.push(Cmd::Score {
                verifier: v,
                step,
                group: g,
                model: model.clone(),
            });
        }
        out
    }

    /// Groups scored for `step`; when the step is complete, what follows (see [`Self::advance`]).
    pub fn scored(
        &mut self,
        step: u64,
        seconds: f64,
        groups: Vec<ScoredGroup>,
    ) -> Result<Cmds<V>, String> {
        let Some(w) = self.steps.get_mut(&step) else {
            return Ok(vec![]);
        };
        w.verify_s += seconds;
        for sg in groups {
            if w.scoring.remove(&sg.group.seq).is_some() {
                w.scored.insert(sg.group.seq, sg);
            }
        }
        if w.in_flight() {
            return Ok(vec![]);
        }
        self.advance()
    }

    /// After a step's scoring finishes: dynamic sampling, then the update when the learner is free,
    /// then whatever launch the credit allows.
    fn advance(&mut self) -> Result<Cmds<V>, String> {
        let b = self.plan.states_per_step;
        let step = self.updates_done;
        let mut out = vec![];
        if let Some(w) = self.steps.get_mut(&step)
            && !w.sent
        {
            let complete = !w.in_flight();
            if complete && self.plan.dynamic_sampling {
                let seqs: Vec<u64> = w.scored.keys().copied().collect();
                let rewards: Vec<Vec<f64>> = w
                    .scored
                    .values()
                    .map(|g| g.rewards.iter().map(|r| r.value).collect())
                    .collect();
                for i in zero_variance_groups(&rewards) {
                    if let Some(g) = w.scored.remove(&seqs[i]) {
                        let lens = g.group.completions.iter().map(|c| c.tokens.len());
                        w.dropped_shapes
                            .push((g.group.prompt.len(), lens.collect()));
                    }
                }
                if w.scored.len() < b && w.rounds < self.plan.max_gen_batches {
                    let n = b - w.scored.len();
                    return Ok(vec![Cmd::Take { step, n }]);
                }
            }
            if complete && !self.learner_busy {
                let batch: Vec<ScoredGroup> = w.scored.values().take(b).cloned().collect();
                if batch.is_empty() {
                    return Err(format!(
                        "step {step}: every group was dropped by dynamic sampling"
                    ));
                }
                let last = step + 1 == self.plan.end_step;
                let checkpoint = last || (step + 1).is_multiple_of(self.plan.checkpoint_every);
                self.learner_busy = true;
                w.sent = true;
                w.checkpointed = checkpoint;
                out.push(Cmd::Learn {
                    step,
                    batch,
                    checkpoint,
                });
            }
        }
        out.extend(self.launch());
        Ok(out)
    }

    /// The environment's cursor when `step`'s batch went to the learner.
    pub fn learning(&mut self, step: u64, cursor: u64) {
        if let Some(w) = self.steps.get_mut(&step) {
            w.cursor = cursor;
        }
    }

    /// The learner finished `step`, producing version `step + 1`. Returns the step's record (for its
    /// metrics line) and what follows.
    pub fn updated(&mut self, step: u64, version: V) -> Result<(StepWork, Cmds<V>), String> {
        self.learner_busy = false;
        let w = self.steps.remove(&step).unwrap_or_default();
        self.updates_done = step + 1;
        self.versions.insert(self.updates_done, version);
        // Keep only the versions a step in progress may still sample from.
        let oldest = self
            .steps
            .values()
            .map(|w| w.version)
            .min()
            .unwrap_or(self.updates_done)
            .min(self.updates_done);
        self.versions.retain(|&v, _| v >= oldest);
        if self.updates_done >= self.plan.end_step {
            let cmd = if w.checkpointed {
                Cmd::Finish(Ok(self.summary()))
            } else {
                // Stopped early (Ctrl-C) after an update that wrote none: write it now.
                Cmd::Checkpoint {
                    steps: self.updates_done,
                    cursor: w.cursor,
                }
            };
            return Ok((w, vec![cmd]));
        }
        let cmds = self.advance()?;
        Ok((w, cmds))
    }

    /// The checkpoint asked for by [`Cmd::Checkpoint`] is written: the run is over.
    pub fn checkpointed(&mut self) -> Cmds<V> {
        vec![Cmd::Finish(Ok(self.summary()))]
    }

    /// Finish the step in progress (its update writes a checkpoint) and launch nothing new.
    pub fn stop(&mut self) {
        let end = (self.updates_done + 1).min(self.plan.end_step);
        self.stopped |= end < self.plan.end_step;
        self.plan.end_step = end;
    }

    /// Hands the unfinished states of policy `from` to the policies `to` (split evenly, per step).
    fn reissue(&mut self, from: usize, to: &[usize]) -> Cmds<V> {
        let mut out = vec![];
        for (&step, w) in self.steps.iter_mut() {
            let mine: Vec<(u64, State)> = w
                .sampling
                .iter()
                .filter(|(_, (_, p))| *p == from)
                .map(|(k, (s, _))| (*k, s.clone()))
                .collect();
            if mine.is_empty() || to.is_empty() {
                continue;
            }
            w.reissued += mine.len();
            self.reissued_total += mine.len();
            let per = mine.len().div_ceil(to.len());
            for (chunk, &p) in mine.chunks(per).zip(to) {
                for (k, _) in chunk {
                    if let Some(e) = w.sampling.get_mut(k) {
                        e.1 = p;
                    }
                }
                out.push(Cmd::Sample {
                    policy: p,
                    step,
                    version: w.version,
                    model: self.versions[&w.version].clone(),
                    states: chunk.to_vec(),
                });
            }
        }
        out
    }

    /// A local policy failed with `why` and has been restarted: its states go to it again, unless the
    /// fault repeats (then the run stops, with the reason).
    pub fn policy_failed(&mut self, policy: usize, why: &str) -> Result<Cmds<V>, String> {
        let held: Vec<u64> = self
            .steps
            .values()
            .flat_map(|w| {
                w.sampling
                    .iter()
                    .filter(|(_, (_, p))| *p == policy)
                    .map(|(k, _)| *k)
            })
            .collect();
        if let Some(stop) = self.faults.record(&format!("policy {policy}"), why, &held) {
            return Err(stop);
        }
        Ok(self.reissue(policy, &[policy]))
    }

    /// A policy worker in another process is gone: its states go to the other policies.
    pub fn worker_gone(&mut self, policy: usize) -> Cmds<V> {
        if let Some(p) = self.policies.get_mut(policy) {
            p.live = false;
        }
        let live = self.live_policies();
        self.reissue(policy, &live)
    }

    /// A verifier failed with `why` and has been restarted: its groups go to it again, unless the
    /// fault repeats.
    pub fn verifier_failed(&mut self, verifier: usize, why: &str) -> Result<Cmds<V>, String> {
        let held: Vec<u64> = self
            .steps
            .values()
            .flat_map(|w| {
                w.scoring
                    .iter()
                    .filter(|(_, (_, v))| *v == verifier)
                    .map(|(k, _)| *k)
            })
            .collect();
        if let Some(stop) = self
            .faults
            .record(&format!("verifier {verifier}"), why, &held)
        {
            return Err(stop);
        }
        let mut out = vec![];
        for (&step, w) in self.steps.iter_mut() {
            for (g, vi) in w.scoring.values() {
                if *vi == verifier {
                    w.reissued += 1;
                    self.reissued_total += 1;
                    out.push(Cmd::Score {
                        verifier,
                        step,
                        group: g.clone(),
                        model: self.versions[&w.version].clone(),
                    });
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod tests;
