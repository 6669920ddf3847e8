//! What crosses the network between a run and its policy workers (`rpt worker`).
//!
//! A worker serves one actor, joined to the process group [`WORKER_GROUP`]; ractor_cluster makes it
//! visible to the run as a remote actor. The run talks to it with three calls, each answered with a
//! JSON `Result` so that a worker's error reaches the run with its reason:
//! - `setup`: the tokenizer, model config, prompt template and sampling settings ([`WorkerSetup`]);
//! - `weights`: one weight version as safetensors bytes (f32, exact), sent once per version;
//! - `sample`: G completions for each of some states with a named version ([`SampleRequest`]), answered
//!   with the groups.
//!
//! Everything is exact: token ids, the f32 log-probs (JSON's shortest round-trip form, parsed back to
//! the same f32), and the weights' bits, so a group sampled by a worker is the group the run would
//! have sampled itself.

use ractor::RpcReplyPort;
use ractor::message::{BoxedDowncastErr, SerializedMessage};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::env::State;
use crate::rollout::Group;

/// The process group policy workers join.
pub const WORKER_GROUP: &str = "rpt.policy_workers";

/// The largest `setup` or `sample` payload, and the largest reply, accepted (bytes). A tokenizer of a
/// few MB and a request of thousands of states fit with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// The largest `weights` payload accepted (bytes): a 16 G-parameter model in f32.
pub const MAX_WEIGHTS_BYTES: usize = 1 << 36;

/// Everything a worker needs besides the weights, sent once when it joins.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerSetup {
    /// The model's `config.json`.
    pub model_config: serde_json::Value,
    /// The tokenizer's `tokenizer.json`.
    pub tokenizer: String,
    pub template: String,
    pub group_size: usize,
    pub seed: u64,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub max_new_tokens: usize,
    /// Weight versions the worker keeps (the run never asks for older ones).
    pub keep_versions: usize,
    /// The run's `rollout.kv_cache_tokens`.
    #[serde(default = "default_kv_cache_tokens")]
    pub kv_cache_tokens: usize,
}

fn default_kv_cache_tokens() -> usize {
    16_384
}

/// Sample `group_size` completions for each state with weight version `version`, for step `step`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleRequest {
    pub step: u64,
    pub version: u64,
    pub states: Vec<(u64, State)>,
}

/// The groups of a [`SampleRequest`], with the worker's sampling time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SampleReply {
    pub groups: Vec<Group>,
    pub seconds: f64,
}

/// A request to a policy worker; every variant is a call answered with [`encode_reply`] bytes.
pub enum WorkerMsg {
    Setup {
        setup: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
    Weights {
        version: u64,
        safetensors: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
    Sample {
        request: Vec<u8>,
        reply: RpcReplyPort<Vec<u8>>,
    },
}

impl ractor::Message for WorkerMsg {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        let (variant, args, reply) = match self {
            WorkerMsg::Setup { setup, reply } => ("setup", setup, reply),
            WorkerMsg::Weights {
                version,
                safetensors,
                reply,
            } => {
                let mut args = Vec::with_capacity(8 + safetensors.len());
                args.extend_from_slice(&version.to_le_bytes());
                args.extend_from_slice(&safetensors);
                ("weights", args, reply)
            }
            WorkerMsg::Sample { request, reply } => ("sample", request, reply),
        };
        Ok(SerializedMessage::Call {
            variant: variant.into(),
            args,
            reply,
            metadata: None,
        })
    }

    fn deserialize(msg: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        let SerializedMessage::Call {
            variant,
            mut args,
            reply,
            ..
        } = msg
        else {
            return Err(BoxedDowncastErr);
        };
        let limit = if variant == "weights" {
            MAX_WEIGHTS_BYTES
        } else {
            MAX_MESSAGE_BYTES
        };
        if args.len() > limit {
            tracing::warn!(
                variant = %variant.chars().take(32).collect::<String>(),
                bytes = args.len(),
                limit,
                "dropped a cluster message over the size limit"
            );
            return Err(BoxedDowncastErr);
        }
        match variant.as_str() {
            "setup" => Ok(WorkerMsg::Setup { setup: args, reply }),
            "weights" if args.len() >= 8 => {
                let version = u64::from_le_bytes(args[..8].try_into().expect("8 bytes"));
                args.drain(..8);
                Ok(WorkerMsg::Weights {
                    version,
                    safetensors: args,
                    reply,
                })
            }
            "sample" => Ok(WorkerMsg::Sample {
                request: args,
                reply,
            }),
            _ => Err(BoxedDowncastErr),
        }
    }
}

/// A call's answer: `Ok(value)` or the worker's error, as JSON.
pub fn encode_reply<T: Serialize>(r: &Result<T, String>) -> Vec<u8> {
    serde_json::to_vec(r).expect("a reply serialises")
}

/// Reads a call's answer; a malformed one is an error naming what was expected.
pub fn decode_reply<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "`{what}` reply from the worker of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        ));
    }
    serde_json::from_slice::<Result<T, String>>(bytes)
        .map_err(|e| format!("malformed `{what}` reply from the worker: {e}"))?
}

/// JSON payload of a request.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("a request serialises")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "`{what}` request of {} bytes is over the limit of {MAX_MESSAGE_BYTES}",
            bytes.len()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("malformed `{what}` request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Completion;

    fn group(seed: u32) -> Group {
        // Log-probs with every kind of f32: tiny, huge, negative zero, non-round values.
        let mut x = seed.wrapping_mul(2654435761);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            f32::from_bits((x % 0x7f00_0000) | 0x8000_0000)
        };
        Group {
            seq: 7,
            state: State {
                doc: 3,
                pos: 11,
                context: vec![1, 2, 3],
                continuation: b"ab\xff".to_vec(),
                boundaries: vec![1, 3],
                next_token: 9,
            },
            prompt: vec![5, 1, 2, 3, 6],
            completions: (0..4)
                .map(|_| Completion {
                    tokens: vec![4, 8, 15],
                    logprobs: (0..50).map(|_| next()).chain([-0.0, -1e-45]).collect(),
                    thought_len: 2,
                })
                .collect(),
            version: 12,
        }
    }

    #[test]
    fn groups_cross_the_wire_bit_for_bit() {
        let reply = SampleReply {
            groups: (0..3).map(group).collect(),
            seconds: 0.25,
        };
        let back: SampleReply = decode_reply(&encode_reply(&Ok(reply.clone())), "sample").unwrap();
        for (a, b) in back.groups.iter().zip(&reply.groups) {
            for (ca, cb) in a.completions.iter().zip(&b.completions) {
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&ca.logprobs), bits(&cb.logprobs));
            }
        }
        assert_eq!(back, reply);
        let err: Result<SampleReply, _> =
            decode_reply(&encode_reply::<SampleReply>(&Err("boom".into())), "sample");
        assert_eq!(err.unwrap_err(), "boom");
        assert!(
            decode_reply::<SampleReply>(b"{", "sample")
                .unwrap_err()
                .contains("malformed `sample` reply")
        );
    }

    #[test]
    fn messages_serialise_and_come_back() {
        use ractor::Message;
        let (tx, _rx) = ractor::concurrency::oneshot();
        let m = WorkerMsg::Weights {
            version: 42,
            safetensors: vec![1, 2, 3],
            reply: tx.into(),
        };
        let s = m.serialize().unwrap();
        match WorkerMsg::deserialize(s).unwrap() {
            WorkerMsg::Weights {
                version,
                safetensors,
                ..
            } => {
                assert_eq!(version, 42);
                assert_eq!(safetensors, vec![1, 2, 3]);
            }
            _ => panic!("wrong variant"),
        }
        let (tx, _rx) = ractor::concurrency::oneshot();
        let s = SerializedMessage::Call {
            variant: "unknown".into(),
            args: vec![],
            reply: tx.into(),
            metadata: None,
        };
        assert!(WorkerMsg::deserialize(s).is_err());
    }
}
