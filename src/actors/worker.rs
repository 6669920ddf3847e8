//! A policy worker, the other end of ractor_cluster scale-out: `rpt worker --connect HOST:PORT` joins a
//! run, receives the tokenizer, the sampling settings and each weight version it needs, and samples
//! groups on its own CPU or GPU. The run treats it as one more policy actor; if the worker dies or its
//! machine drops off the network, the run hands its states to the others.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use tokio::sync::mpsc;

use super::wire::{
    SampleReply, SampleRequest, WORKER_GROUP, WorkerMsg, WorkerSetup, decode, encode_reply,
};
use crate::error::{Error, Result};
use crate::model::{Decoder, Device, ModelConfig, SampleParams, Tokenizer, weights_from_bytes};
use crate::prompt::Prompt;
use crate::rollout::{PolicySnapshot, sample_groups};

/// Options of `rpt worker`.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The run's `cluster.listen` address, as this machine reaches it.
    pub connect: String,
    pub cookie: String,
    /// Name of this worker's cluster node (the run's connection logs show it).
    pub name: String,
    /// Keep trying to reach the run for this long (it may not be listening yet).
    pub wait: Duration,
    pub device: Device,
    /// Test hook: the process exits abruptly when sample request number `n + 1` arrives.
    pub exit_after_samples: Option<usize>,
}

/// What a worker did before the run let it go.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct WorkerSummary {
    pub requests: usize,
    pub states: usize,
    pub weight_versions: usize,
}

/// Everything set up from a [`WorkerSetup`].
struct Ready {
    config: ModelConfig,
    tokenizer: Arc<Tokenizer>,
    prompt: Prompt,
    params: SampleParams,
    group_size: usize,
    seed: u64,
    keep: usize,
    kv_cache_tokens: usize,
}

struct WorkerActor;

struct WorkerState {
    device: Device,
    ready: Option<Arc<Ready>>,
    versions: BTreeMap<u64, Arc<Decoder>>,
    summary: WorkerSummary,
    exit_after: Option<usize>,
    done: mpsc::UnboundedSender<Event>,
}

fn setup(bytes: &[u8]) -> std::result::Result<Ready, String> {
    let s: WorkerSetup = decode(bytes, "setup")?;
    let label = Path::new("<run>");
    let config = ModelConfig::from_value(&s.model_config, &label.join("config.json"))
        .map_err(|e| e.to_string())?;
    let tokenizer = Tokenizer::from_json(&s.tokenizer, &label.join("tokenizer.json"))
        .map_err(|e| e.to_string())?;
    tokenizer
        .check_fits(config.vocab_size)
        .map_err(|e| e.to_string())?;
    let prompt = Prompt::new(&s.template, &tokenizer).map_err(|e| e.to_string())?;
    Ok(Ready {
        config,
        tokenizer: Arc::new(tokenizer),
        prompt,
        params: SampleParams {
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            max_new_tokens: s.max_new_tokens,
        },
        group_size: s.group_size,
        seed: s.seed,
        keep: s.keep_versions.max(1),
        kv_cache_tokens: s.kv_cache_tokens.max(1),
    })
}

impl Actor for WorkerActor {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerState;

    async fn pre_start(
        &self,
        _: ActorRef<WorkerMsg>,
        st: WorkerState,
    ) -> std::result::Result<WorkerState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        st: &mut WorkerState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Setup {
                setup: bytes,
                reply,
            } => {
                let r = setup(&bytes).map(|ready| {
                    st.ready = Some(Arc::new(ready));
                    st.versions.clear();
                });
                if let Err(e) = &r {
                    tracing::error!("setup from the run failed: {e}");
                }
                let _ = reply.send(encode_reply(&r));
            }
            WorkerMsg::Weights {
                version,
                safetensors,
                reply,
            } => {
                let r = match st.ready.clone() {
                    None => Err("weights before setup".to_string()),
                    Some(ready) => {
                        let (device, keep) = (st.device.clone(), ready.keep);
                        tokio::task::spawn_blocking(move || {
                            let w = weights_from_bytes(
                                &safetensors,
                                &ready.config,
                                &device,
                                Path::new("<run>/weights"),
                            )?;
                            Decoder::new(&ready.config, &w)
                        })
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()))
                        .map(|d| {
                            st.versions.insert(version, Arc::new(d));
                            while st.versions.len() > keep {
                                st.versions.pop_first();
                            }
                            st.summary.weight_versions += 1;
                            tracing::info!(version, "weights received");
                        })
                    }
                };
                let _ = reply.send(encode_reply(&r));
            }
            WorkerMsg::Sample { request, reply } => {
                if st.exit_after == Some(st.summary.requests) {
                    tracing::error!("test hook: exiting abruptly before answering a request");
                    std::process::exit(3);
                }
                let r = match (decode::<SampleRequest>(&request, "sample"), &st.ready) {
                    (Err(e), _) => Err(e),
                    (_, None) => Err("sample request before setup".to_string()),
                    (Ok(req), Some(ready)) => match st.versions.get(&req.version) {
                        None => Err(format!(
                            "no weights for version {} (have {:?})",
                            req.version,
                            st.versions.keys().collect::<Vec<_>>()
                        )),
                        Some(model) => {
                            let snap = PolicySnapshot {
                                version: req.version,
                                model: model.clone(),
                            };
                            let ready = ready.clone();
                            let n = req.states.len();
                            let t0 = Instant::now();
                            let r = tokio::task::spawn_blocking(move || {
                                sample_groups(
                                    &snap,
                                    &ready.tokenizer,
                                    &ready.prompt,
                                    &req.states,
                                    ready.group_size,
                                    &ready.params,
                                    ready.seed,
                                    req.step,
                                    true,
                                    ready.kv_cache_tokens,
                                )
                            })
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                            .map(|groups| SampleReply {
                                groups,
                                seconds: t0.elapsed().as_secs_f64(),
                            });
                            st.summary.requests += 1;
                            st.summary.states += n;
                            tracing::info!(states = n, "sampled");
                            r
                        }
                    },
                };
                let _ = reply.send(encode_reply(&r));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<WorkerMsg>,
        st: &mut WorkerState,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let _ = st.done.send(Event::Stopped(st.summary.clone()));
        Ok(())
    }
}

#[derive(Debug)]
enum Event {
    Ready,
    Disconnected,
    Stopped(WorkerSummary),
}

struct Events(mpsc::UnboundedSender<Event>);

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send(Event::Disconnected);
    }
    fn node_session_authenicated(&self, _: ractor_cluster::node::NodeServerSessionInformation) {}
    fn node_session_ready(&self, _: ractor_cluster::node::NodeServerSessionInformation) {
        let _ = self.0.send(Event::Ready);
    }
}

/// `HOST:PORT` with a port number: an address that can never parse is refused at once instead of being
/// retried for the whole wait (a host that does not resolve yet is retried, as the run may be starting).
pub fn check_address(addr: &str) -> std::result::Result<(), String> {
    let ok = addr.parse::<std::net::SocketAddr>().is_ok()
        || addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains([' ', '/']) && port.parse::<u16>().is_ok()
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--connect {addr:?}: expected HOST:PORT of the run, e.g. 10.0.0.5:4870 (the run's `cluster.listen`)"
        ))
    }
}

/// Joins the run at `opts.connect` and samples for it until the run closes the connection.
pub async fn serve(opts: WorkerOptions) -> Result<WorkerSummary> {
    let err = |m: String| Error::Run(format!("worker: {m}"));
    check_address(&opts.connect).map_err(err)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = NodeServer::new(
        0,
        opts.cookie.clone(),
        opts.name.clone(),
        hostname(),
        None,
        None,
    );
    let (server, server_h) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| err(format!("starting the cluster node: {e}")))?;
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: "rpt-worker".into(),
            subscription: Box::new(Events(tx.clone())),
        })
        .map_err(|e| err(e.to_string()))?;
    let state = WorkerState {
        device: opts.device.clone(),
        ready: None,
        versions: BTreeMap::new(),
        summary: WorkerSummary::default(),
        exit_after: opts.exit_after_samples,
        done: tx,
    };
    let (actor, actor_h) = Actor::spawn(None, WorkerActor, state)
        .await
        .map_err(|e| err(format!("starting the policy actor: {e}")))?;
    ractor::pg::join(WORKER_GROUP.to_string(), vec![actor.get_cell()]);

    let t0 = Instant::now();
    loop {
        match ractor_cluster::client_connect(&server, opts.connect.as_str()).await {
            Ok(()) => break,
            Err(e) if t0.elapsed() < opts.wait => {
                tracing::debug!("{}: {e}; retrying", opts.connect);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(err(format!(
                    "cannot reach the run at {} after {:.0} s: {e}",
                    opts.connect,
                    opts.wait.as_secs_f64()
                )));
            }
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
        Ok(Some(Event::Ready)) => {
            tracing::info!("joined the run at {} as `{}`", opts.connect, opts.name)
        }
        Ok(Some(_)) | Ok(None) => {
            return Err(err(format!(
                "the run at {} closed the connection during the handshake; check that --cookie \
                 matches its `cluster.cookie`",
                opts.connect
            )));
        }
        Err(_) => {
            return Err(err(format!(
                "no handshake from {} within 30 s; is it an `rpt train` with a [cluster] section?",
                opts.connect
            )));
        }
    }
    // Serve until the run goes away.
    while let Some(e) = rx.recv().await {
        if matches!(e, Event::Disconnected | Event::Stopped(_)) {
            break;
        }
    }
    tracing::info!("the run closed the connection; stopping");
    actor.stop(None);
    let _ = actor_h.await;
    let mut summary = WorkerSummary::default();
    while let Ok(e) = rx.try_recv() {
        if let Event::Stopped(s) = e {
            summary = s;
        }
    }
    server.stop(None);
    let _ = server_h.await;
    Ok(summary)
}

/// This machine's name, for the cluster handshake.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}
