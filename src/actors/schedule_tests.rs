//! The schedule alone: launches under the staleness credit, re-issue after failures, the learner's
//! batch order, dynamic sampling, and which weight versions are kept. A small simulator plays the
//! environment, the policies, the verifiers and the learner; a version is its number.

use std::collections::VecDeque;

use super::*;
use crate::reward::Reward;
use crate::rollout::Completion;

fn state(k: u64) -> State {
    State {
        doc: 0,
        pos: k as usize,
        context: vec![1, 2],
        continuation: b"x".to_vec(),
        boundaries: vec![1],
        next_token: 3,
    }
}

fn group(seq: u64, version: u64) -> Group {
    Group {
        seq,
        state: state(seq),
        prompt: vec![1, 2],
        completions: vec![
            Completion {
                tokens: vec![5],
                logprobs: vec![-0.5],
                thought_len: 1,
            };
            2
        ],
        version,
    }
}

/// Rewards of state `seq`'s group: all equal (no variance) when `flat`.
fn scored(g: Group, flat: bool) -> ScoredGroup {
    let r = |v: f64| Reward {
        value: v,
        correct: v > 0.5,
        format: None,
    };
    let rewards = if flat {
        vec![r(0.0), r(0.0)]
    } else {
        vec![r(0.0), r(1.0)]
    };
    ScoredGroup { group: g, rewards }
}

fn plan(states: usize, staleness: u64, steps: u64) -> Plan {
    Plan {
        states_per_step: states,
        max_staleness: staleness,
        dynamic_sampling: false,
        max_gen_batches: 1,
        checkpoint_every: 2,
        verifiers: 2,
        start_step: 0,
        end_step: steps,
    }
}

/// What the simulator saw.
#[derive(Default, Debug)]
struct Log {
    /// (step, version) of each Sample command, in order.
    samples: Vec<(u64, u64, usize)>,
    /// (step, state indices of the batch) of each Learn command.
    learned: Vec<(u64, Vec<u64>)>,
    finished: Option<Result<Summary, String>>,
    checkpoints: Vec<u64>,
    /// (step, shapes of the groups dynamic sampling dropped) of each finished update.
    dropped: Vec<(u64, Vec<crate::flops::GroupShape>)>,
}

/// Runs `sched` to the end. Work waits in queues; `pick` chooses which pending event happens next
/// (by index), so tests can reorder arrivals. `flat(seq)` says which groups get equal rewards.
fn simulate(
    sched: &mut Schedule<u64>,
    mut pick: impl FnMut(usize) -> usize,
    flat: impl Fn(u64) -> bool,
) -> Log {
    enum Ev {
        Sampled(usize, u64, Vec<Group>),
        Scored(u64, ScoredGroup),
        Updated(u64),
    }
    let mut log = Log::default();
    let mut cursor = 0u64;
    let mut pending: Vec<Ev> = vec![];
    let mut cmds: VecDeque<Cmd<u64>> = sched.start().into();
    for _ in 0..10_000 {
        while let Some(c) = cmds.pop_front() {
            match c {
                Cmd::Take { step, n } => {
                    let states: Vec<(u64, State)> =
                        (cursor..cursor + n as u64).map(|k| (k, state(k))).collect();
                    cursor += n as u64;
                    cmds.extend(sched.took(step, states).unwrap());
                }
                Cmd::Sample {
                    policy,
                    step,
                    version,
                    model,
                    states,
                } => {
                    assert_eq!(version, model, "a step samples with the version it names");
                    log.samples.push((step, version, policy));
                    let groups = states.iter().map(|(k, _)| group(*k, version)).collect();
                    pending.push(Ev::Sampled(policy, step, groups));
                }
                Cmd::Score { step, group, .. } => {
                    let f = flat(group.seq);
                    pending.push(Ev::Scored(step, scored(group, f)));
                }
                Cmd::Learn {
                    step,
                    batch,
                    checkpoint,
                } => {
                    sched.learning(step, cursor);
                    if checkpoint {
                        log.checkpoints.push(step + 1);
                    }
                    log.learned
                        .push((step, batch.iter().map(|g| g.group.seq).collect()));
                    pending.push(Ev::Updated(step));
                }
                Cmd::Checkpoint { steps, .. } => {
                    log.checkpoints.push(steps);
                    cmds.extend(sched.checkpointed());
                }
                Cmd::Finish(r) => {
                    log.finished = Some(r);
                    return log;
                }
            }
        }
        assert!(!pending.is_empty(), "the schedule stalled: {log:?}");
        let ev = pending.remove(pick(pending.len()) % pending.len());
        match ev {
            Ev::Sampled(p, step, groups) => cmds.extend(sched.sampled(p, step, 0.0, groups)),
            Ev::Scored(step, g) => cmds.extend(sched.scored(step, 0.0, vec![g]).unwrap()),
            Ev::Updated(step) => {
                let (w, c) = sched.updated(step, step + 1).unwrap();
                assert!(w.sent);
                log.dropped.push((step, w.dropped_shapes.clone()));
                cmds.extend(c);
            }
        }
    }
    panic!("the schedule did not finish: {log:?}");
}

fn new(plan: Plan, policies: usize) -> Schedule<u64> {
    let mut s = Schedule::new(plan, 0);
    for _ in 0..policies {
        s.add_policy(false);
    }
    s
}

#[test]
fn on_policy_each_step_samples_the_newest_weights() {
    let mut s = new(plan(3, 0, 4), 2);
    let log = simulate(&mut s, |_| 0, |_| false);
    let versions: Vec<(u64, u64)> = log.samples.iter().map(|&(s, v, _)| (s, v)).collect();
    // Step j samples with version j, its 3 states split over both policies.
    assert_eq!(
        versions,
        vec![
            (0, 0),
            (0, 0),
            (1, 1),
            (1, 1),
            (2, 2),
            (2, 2),
            (3, 3),
            (3, 3)
        ]
    );
    assert_eq!(log.learned.len(), 4);
    assert_eq!(log.checkpoints, vec![2, 4]);
    assert_eq!(
        log.finished,
        Some(Ok(Summary {
            steps: 4,
            reissued: 0,
            stopped: false
        }))
    );
}

#[test]
fn staleness_credit_lets_one_step_run_ahead_and_no_more() {
    let mut s = new(plan(2, 1, 4), 1);
    // Updates come last: every other event first.
    let log = simulate(&mut s, |n| n - 1, |_| false);
    let versions: Vec<(u64, u64)> = log.samples.iter().map(|&(s, v, _)| (s, v)).collect();
    // Step 1 launches on version 0 while step 0 is learned; later steps lag by one update.
    assert_eq!(versions, vec![(0, 0), (1, 0), (2, 1), (3, 2)]);
}

#[test]
fn the_batch_is_in_environment_order_whatever_the_arrival_order() {
    for seed in 0..20u64 {
        let mut x = seed * 7 + 1;
        let mut s = new(plan(5, 0, 3), 3);
        let log = simulate(
            &mut s,
            |n| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as usize % n
            },
            |_| false,
        );
        let want: Vec<(u64, Vec<u64>)> =
            (0..3).map(|j| (j, (j * 5..j * 5 + 5).collect())).collect();
        assert_eq!(log.learned, want, "arrival order {seed}");
    }
}

#[test]
fn a_failed_policy_gets_its_states_again_and_a_repeat_stops_the_run() {
    let mut s = new(plan(4, 0, 2), 2);
    let cmds = s.start();
    let Cmd::Take { step, n } = &cmds[0] else {
        panic!("{cmds:?}")
    };
    let states = (0..*n as u64).map(|k| (k, state(k))).collect();
    let sent = s.took(*step, states).unwrap();
    assert_eq!(sent.len(), 2);
    // Policy 1 held states 2 and 3: they are re-issued to it, and counted.
    let again = s.policy_failed(1, "boom").unwrap();
    match &again[..] {
        [
            Cmd::Sample {
                policy: 1, states, ..
            },
        ] => {
            assert_eq!(states.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [2, 3])
        }
        other => panic!("{other:?}"),
    }
    // The same states failing again: the run stops, quoting the first error.
    let e = s.policy_failed(1, "boom again").unwrap_err();
    assert!(
        e.contains("failed twice") && e.contains("policy 1: boom"),
        "{e}"
    );
}

#[test]
fn a_gone_worker_hands_its_states_to_the_others() {
    let mut s = new(plan(4, 0, 1), 1);
    let w = s.add_policy(true);
    assert!(s.is_remote(w) && !s.is_remote(0));
    let states = (0..4).map(|k| (k, state(k))).collect();
    s.start();
    let first = s.took(0, states).unwrap();
    let again = s.worker_gone(w);
    let to: Vec<usize> = again
        .iter()
        .map(|c| match c {
            Cmd::Sample { policy, .. } => *policy,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(to, vec![0]);
    // Everything is still learned exactly once: policy 0's own states and the worker's.
    let mut cmds: Vec<Cmd<u64>> = first
        .into_iter()
        .filter(|c| matches!(c, Cmd::Sample { policy: 0, .. }))
        .collect();
    cmds.extend(again);
    let mut log = simulate_from(&mut s, cmds);
    log.learned.sort();
    assert_eq!(log.learned, vec![(0, vec![0, 1, 2, 3])]);
    assert_eq!(log.finished.unwrap().unwrap().reissued, 2);
}

/// Continues a schedule from commands already issued (policies answer in order).
fn simulate_from(sched: &mut Schedule<u64>, cmds: Vec<Cmd<u64>>) -> Log {
    let mut log = Log::default();
    let mut queue: VecDeque<Cmd<u64>> = cmds.into();
    while let Some(c) = queue.pop_front() {
        match c {
            Cmd::Sample {
                policy,
                step,
                states,
                version,
                ..
            } => {
                let gs = states.iter().map(|(k, _)| group(*k, version)).collect();
                queue.extend(sched.sampled(policy, step, 0.0, gs));
            }
            Cmd::Score { step, group, .. } => {
                queue.extend(sched.scored(step, 0.0, vec![scored(group, false)]).unwrap());
            }
            Cmd::Learn { step, batch, .. } => {
                log.learned
                    .push((step, batch.iter().map(|g| g.group.seq).collect()));
                queue.extend(sched.updated(step, step + 1).unwrap().1);
            }
            Cmd::Finish(r) => log.finished = Some(r),
            other => panic!("{other:?}"),
        }
    }
    log
}

#[test]
fn dynamic_sampling_drops_flat_groups_and_takes_more_states() {
    let mut p = plan(3, 0, 1);
    p.dynamic_sampling = true;
    p.max_gen_batches = 3;
    let mut s = new(p, 1);
    // States 1 and 2 get equal rewards: dropped, and replaced by states 3 and 4.
    let log = simulate(&mut s, |_| 0, |seq| seq == 1 || seq == 2);
    assert_eq!(log.learned, vec![(0, vec![0, 3, 4])]);
    // The dropped groups were sampled all the same: the step's record keeps their shapes, for its
    // FLOPs (prompt of 2 tokens, two completions of 1).
    assert_eq!(log.dropped, vec![(0, vec![(2, vec![1, 1]); 2])]);
}

#[test]
fn only_versions_a_step_in_progress_needs_are_kept() {
    let mut s = new(plan(1, 1, 5), 1);
    simulate(&mut s, |n| n - 1, |_| false);
    // After the run only the last version is left.
    assert_eq!(s.versions.keys().copied().collect::<Vec<_>>(), vec![5]);
    let mut s = new(plan(1, 0, 3), 1);
    s.start();
    s.took(0, vec![(0, state(0))]).unwrap();
    assert_eq!(s.versions.len(), 1);
}

/// A run of `steps` steps of `states` states each, asked to stop during its first step: what it
/// learned and how it finished.
fn stopped_in_the_first_step(states: u64, steps: u64) -> Log {
    let mut s = new(plan(states as usize, 0, steps), 1);
    s.start();
    let taken: Vec<(u64, State)> = (0..states).map(|k| (k, state(k))).collect();
    s.took(0, taken.clone()).unwrap();
    s.stop();
    simulate_from(
        &mut s,
        vec![Cmd::Sample {
            policy: 0,
            step: 0,
            version: 0,
            model: 0,
            states: taken,
        }],
    )
}

#[test]
fn a_stop_finishes_the_step_in_progress_and_checkpoints_it() {
    let log = stopped_in_the_first_step(2, 10);
    assert_eq!(log.learned, vec![(0, vec![0, 1])]);
    assert_eq!(
        log.finished,
        Some(Ok(Summary {
            steps: 1,
            reissued: 0,
            stopped: true
        }))
    );
}

#[test]
fn a_stop_during_the_last_step_is_not_an_early_stop() {
    let log = stopped_in_the_first_step(1, 1);
    assert_eq!(
        log.finished,
        Some(Ok(Summary {
            steps: 1,
            reissued: 0,
            stopped: false
        }))
    );
}
