//! The environment actor: owns an [`Environment`] and hands out states in its seeded order, each tagged
//! with its index in that order.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::messages::EnvMsg;
use crate::env::Environment;

pub struct EnvironmentActor;

impl Actor for EnvironmentActor {
    type Msg = EnvMsg;
    type State = Box<dyn Environment>;
    type Arguments = Box<dyn Environment>;

    async fn pre_start(
        &self,
        _: ActorRef<EnvMsg>,
        env: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(env)
    }

    async fn handle(
        &self,
        _: ActorRef<EnvMsg>,
        msg: EnvMsg,
        env: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EnvMsg::Take(n, reply) => {
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = env.cursor();
                    match env.next_state() {
                        Some(s) => out.push((k, s)),
                        None => break,
                    }
                }
                let _ = reply.send(out);
            }
            EnvMsg::Cursor(reply) => {
                let _ = reply.send(env.cursor());
            }
        }
        Ok(())
    }
}
