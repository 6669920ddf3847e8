//! The blocking-job skeleton the policy and verifier actors share: candle work runs on a blocking
//! thread, never inside a handler; its items go to the supervisor as a message, and its error (or
//! panic) comes back to the actor, which fails so that the supervisor restarts it.

use ractor::ActorRef;

use super::messages::{SupMsg, Work};

/// Runs a job, turning a panic into an error with the panic's message, so that a job that panics on
/// its thread fails its actor instead of vanishing.
pub fn run_job<T, E: std::fmt::Display>(
    job: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            Err(format!("panicked: {msg}"))
        }
    }
}

/// Where a job's result goes.
pub struct Reply<M: ractor::Message, T> {
    /// The actor that started the job, told of a failure with `failed`.
    pub actor: ActorRef<M>,
    pub failed: fn(String) -> M,
    /// The supervisor, sent the items wrapped by `done`.
    pub supervisor: ActorRef<SupMsg>,
    pub done: fn(Work<T>) -> SupMsg,
    pub worker: usize,
    pub step: u64,
}

/// Runs `job` on a blocking thread and sends its outcome where `reply` says.
pub fn spawn<M, T, E>(
    reply: Reply<M, T>,
    job: impl FnOnce() -> std::result::Result<Vec<T>, E> + Send + 'static,
) where
    M: ractor::Message,
    T: Send + 'static,
    E: std::fmt::Display,
{
    tokio::task::spawn_blocking(move || {
        let t0 = std::time::Instant::now();
        match run_job(job) {
            Ok(items) => {
                let _ = reply.supervisor.cast((reply.done)(Work {
                    worker: reply.worker,
                    step: reply.step,
                    seconds: t0.elapsed().as_secs_f64(),
                    items,
                }));
            }
            Err(e) => {
                let _ = reply.actor.cast((reply.failed)(e));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let r: Result<(), String> =
            run_job(|| -> Result<(), String> { panic!("capacity overflow") });
        assert_eq!(r.unwrap_err(), "panicked: capacity overflow");
        let r = run_job(|| -> Result<u8, String> { Err("plain".into()) });
        assert_eq!(r.unwrap_err(), "plain");
        assert_eq!(run_job(|| -> Result<u8, String> { Ok(3) }).unwrap(), 3);
    }
}
