//! The run's side of ractor_cluster scale-out: a cluster node listening on `cluster.listen`, and one
//! proxy actor per connected policy worker. A proxy takes the same requests as a local policy actor,
//! sends the worker the setup once and each weight version it lacks, asks it for the groups, and hands
//! them to the supervisor as a local policy would. If the worker fails, answers with an error, does not
//! answer within `cluster.request_timeout_s`, or leaves the cluster, the proxy fails and the supervisor
//! gives the worker's unfinished states to the other policies.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};

use super::messages::{PolicyMsg, RunShared, SupMsg, Work};
use super::wire::{
    SampleReply, SampleRequest, WORKER_GROUP, WorkerMsg, WorkerSetup, decode_reply, encode,
};
use crate::config::ClusterSection;
use crate::error::{Error, Result};
use crate::model::{Decoder, weights_to_bytes};

/// The run's cluster node.
pub struct Cluster {
    server: ActorRef<NodeServerMessage>,
    handle: JoinHandle<()>,
}

impl Cluster {
    /// Starts listening on `c.listen`, then waits until `c.min_workers` workers have joined.
    pub async fn start(c: &ClusterSection) -> Result<Self> {
        let addr: SocketAddr = c.listen.parse().map_err(|_| {
            Error::Run(format!(
                "cluster.listen: expected IP:PORT, got {:?}",
                c.listen
            ))
        })?;
        let server = NodeServer::new(
            addr.port(),
            c.cookie.clone(),
            "rpt-run".into(),
            super::worker::hostname(),
            None,
            None,
        )
        .with_listen_addr(addr.ip());
        let (server, handle) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| Error::Run(format!("cluster.listen: cannot listen on {addr}: {e}")))?;
        tracing::info!(
            "listening for policy workers on {addr} (`rpt worker --connect {addr} --cookie …`)"
        );
        let cluster = Cluster { server, handle };
        let t0 = Instant::now();
        let wait = Duration::from_secs_f64(c.wait_s);
        loop {
            let n = workers().len();
            if n >= c.min_workers {
                if c.min_workers > 0 {
                    tracing::info!("{n} policy worker(s) joined");
                }
                return Ok(cluster);
            }
            if t0.elapsed() >= wait {
                cluster.stop().await;
                return Err(Error::Run(format!(
                    "cluster: waited {:.0} s for cluster.min_workers = {} policy workers on {addr}; \
                     {n} joined. Start them with `rpt worker --connect <this machine>:{} --cookie …`",
                    c.wait_s,
                    c.min_workers,
                    addr.port()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Closes every worker connection (the workers then exit) and stops listening.
    pub async fn stop(self) {
        self.server.stop(None);
        let _ = self.handle.await;
    }
}

/// The policy workers connected now.
pub fn workers() -> Vec<ractor::ActorCell> {
    ractor::pg::get_members(&WORKER_GROUP.to_string())
        .into_iter()
        .filter(|c| !c.get_id().is_local())
        .collect()
}

/// What every proxy of a run sends: the setup, and the latest weight version encoded once.
pub struct Outbox {
    setup: Vec<u8>,
    /// Weight versions a worker keeps (the same rule on both sides).
    keep: usize,
    weights: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
}

impl Outbox {
    pub fn new(shared: &RunShared, model: &Decoder) -> Result<Self> {
        let cfg = &shared.cfg;
        let tokenizer = shared
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| Error::Run(format!("serialising the tokenizer for workers: {e}")))?;
        let setup = WorkerSetup {
            model_config: model.config().to_json(),
            tokenizer,
            template: cfg.prompt.template.clone(),
            group_size: cfg.rollout.group_size,
            seed: cfg.seed,
            temperature: shared.sample_params.temperature,
            top_k: shared.sample_params.top_k,
            top_p: shared.sample_params.top_p,
            max_new_tokens: shared.sample_params.max_new_tokens,
            keep_versions: cfg.rollout.max_staleness as usize + 2,
            kv_cache_tokens: cfg.rollout.kv_cache_tokens,
        };
        Ok(Outbox {
            keep: setup.keep_versions,
            setup: encode(&setup),
            weights: Mutex::new(None),
        })
    }

    /// The safetensors bytes of `version`, encoded at most once however many workers ask.
    fn weights(&self, version: u64, model: &Decoder) -> Result<Arc<Vec<u8>>> {
        let mut slot = self.weights.lock().expect("weights cache lock");
        if let Some((v, b)) = slot.as_ref()
            && *v == version
        {
            return Ok(b.clone());
        }
        let bytes = Arc::new(weights_to_bytes(model.named_tensors())?);
        *slot = Some((version, bytes.clone()));
        Ok(bytes)
    }
}

pub struct RemotePolicy;

pub struct RemotePolicyArgs {
    pub id: usize,
    pub worker: ActorRef<WorkerMsg>,
    pub outbox: Arc<Outbox>,
    pub supervisor: ActorRef<SupMsg>,
    pub timeout: Duration,
}

pub struct RemotePolicyState {
    a: RemotePolicyArgs,
    set_up: bool,
    /// Weight versions the worker holds.
    sent: BTreeSet<u64>,
}

impl RemotePolicyState {
    async fn call(
        &self,
        what: &str,
        make: impl FnOnce(ractor::RpcReplyPort<Vec<u8>>) -> WorkerMsg,
    ) -> std::result::Result<Vec<u8>, String> {
        let node = self.a.worker.get_id();
        match self.a.worker.call(make, Some(self.a.timeout)).await {
            Ok(CallResult::Success(b)) => Ok(b),
            Ok(CallResult::Timeout) => Err(format!(
                "worker {node}: no answer to `{what}` within {:.0} s",
                self.a.timeout.as_secs_f64()
            )),
            Ok(CallResult::SenderError) => Err(format!(
                "worker {node}: the connection closed during `{what}`"
            )),
            Err(e) => Err(format!("worker {node}: sending `{what}`: {e}")),
        }
    }
}

impl Actor for RemotePolicy {
    type Msg = PolicyMsg;
    type State = RemotePolicyState;
    type Arguments = RemotePolicyArgs;

    async fn pre_start(
        &self,
        _: ActorRef<PolicyMsg>,
        a: RemotePolicyArgs,
    ) -> std::result::Result<RemotePolicyState, ActorProcessingErr> {
        Ok(RemotePolicyState {
            a,
            set_up: false,
            sent: BTreeSet::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<PolicyMsg>,
        msg: PolicyMsg,
        st: &mut RemotePolicyState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let PolicyMsg::Sample {
            step,
            snapshot,
            states,
        } = msg
        else {
            if let PolicyMsg::Failed(e) = msg {
                return Err(e.into());
            }
            return Ok(());
        };
        if !st.set_up {
            let setup = st.a.outbox.setup.clone();
            let r = st
                .call("setup", |reply| WorkerMsg::Setup { setup, reply })
                .await?;
            decode_reply::<()>(&r, "setup")?;
            st.set_up = true;
        }
        let version = snapshot.version;
        if !st.sent.contains(&version) {
            let (outbox, model) = (st.a.outbox.clone(), snapshot.model.clone());
            let bytes =
                tokio::task::spawn_blocking(move || outbox.weights(version, &model)).await??;
            let r = st
                .call("weights", |reply| WorkerMsg::Weights {
                    version,
                    safetensors: bytes.as_ref().clone(),
                    reply,
                })
                .await?;
            decode_reply::<()>(&r, "weights")?;
            st.sent.insert(version);
            while st.sent.len() > st.a.outbox.keep {
                st.sent.pop_first();
            }
        }
        let request = encode(&SampleRequest {
            step,
            version,
            states,
        });
        let r = st
            .call("sample", |reply| WorkerMsg::Sample { request, reply })
            .await?;
        let reply: SampleReply = decode_reply(&r, "sample")?;
        st.a.supervisor.cast(SupMsg::Sampled(Work {
            worker: st.a.id,
            step,
            seconds: reply.seconds,
            items: reply.groups,
        }))?;
        Ok(())
    }
}
