//! The control channel between the supervisor and one worker: a Unix
//! socket pair made before spawning (no socket file), carrying
//! length-delimited `postcard` messages. Handshake, configuration,
//! heartbeats, metrics and shutdown travel here; tensors never do.
//!
//! Both sides open with [`ControlMessage::Hello`]; a peer speaking another
//! protocol version is answered with [`ControlMessage::Refused`] and the
//! channel is closed: a clear error, never a crash.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Version of the control protocol and ring layout together.
pub const PROTOCOL_VERSION: u32 = 8;
/// Largest control message accepted.
pub const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Which kind of worker is on the other end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The supervisor itself.
    Supervisor,
    /// A tokenizer worker.
    Tokenizer,
    /// A model worker.
    Model,
}

/// Settings the supervisor sends a worker after the handshake.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// Longest pair in tokens.
    pub max_length: u32,
    /// Heartbeat period in milliseconds.
    pub heartbeat_ms: u64,
    /// What the worker serves, by role.
    pub job: WorkerJob,
}

/// What one worker serves: typed per role, so neither side parses a
/// setting the other wrote as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerJob {
    /// A tokenizer worker: one tokenizer per served model, in the models'
    /// order (a job's `model` indexes this list; `None` for a model that
    /// did not load, whose jobs never come).
    Tokenizer {
        /// The tokenizers to load.
        tokenizers: Vec<Option<TokenizerSpec>>,
        /// Threads a job's documents are encoded on: 1 keeps the worker on
        /// one thread (the pool scales by processes); more turns on the
        /// tokenizers library's own batch parallelism in this worker.
        threads: u32,
    },
    /// A model replica: model, dtype, device, attention layout, threads.
    Model(ce_model_spec::ReplicaSpec),
}

/// One tokenizer of a tokenizer worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// Path of the model's `tokenizer.json`.
    pub file: std::path::PathBuf,
    /// Longest pair of that model, in tokens (special tokens included).
    pub max_length: u32,
    /// An LLM reranker's prompt (pairs are scored in it); `None` for an
    /// encoder, which pairs texts with its tokenizer's template.
    pub prompt: Option<ce_model_spec::PromptTemplate>,
}

impl WorkerJob {
    /// The role a worker serving this job has.
    pub fn role(&self) -> Role {
        match self {
            WorkerJob::Tokenizer { .. } => Role::Tokenizer,
            WorkerJob::Model(_) => Role::Model,
        }
    }
}

/// A worker's own figures, sent periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetricsSnapshot {
    /// CPU seconds used by the process so far.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Jobs or batches completed.
    pub jobs: u64,
    /// Pairs completed.
    pub pairs: u64,
    /// Seconds spent working (tokenizing or in forward passes).
    pub busy_seconds: f64,
}

/// The GPU a model worker opened, as its driver describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GpuDevice {
    /// The driver's name for it (`NVIDIA H200`).
    pub name: String,
    /// Compute capability, `major.minor` (`9.0`).
    pub compute_capability: String,
    /// Its memory in bytes, all of it (not this process's share).
    pub total_memory_bytes: u64,
}

/// Everything that travels on a control channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// First message from both sides.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        protocol_version: u32,
        /// The sender's role.
        role: Role,
        /// Replica or worker index.
        replica: u32,
        /// The sender's pid.
        pid: u32,
    },
    /// The peer cannot serve (another protocol, a model that does not
    /// load, an unusable device); the channel closes after this.
    Refused {
        /// Why.
        reason: String,
        /// Starting the same worker again cannot help (a device that is
        /// absent, a back-end not built in): the supervisor gives the slot
        /// up at once instead of retrying.
        permanent: bool,
    },
    /// Supervisor → worker configuration.
    Config(WorkerConfig),
    /// The worker has loaded and warmed up and is serving.
    Ready {
        /// What computes its work, for `/info`: a model worker's path and
        /// kernel (say `cpu encoder, bf16 on amx`); empty for a tokenizer.
        kernel: String,
        /// The GPU a model worker computes on; `None` on the CPU.
        gpu: Option<GpuDevice>,
    },
    /// Liveness, both ways.
    Heartbeat {
        /// Increments with each heartbeat.
        seq: u64,
    },
    /// Worker → supervisor figures.
    Metrics(MetricsSnapshot),
    /// Finish what is in hand within `grace_ms`, then exit.
    Shutdown {
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
}

/// Why the control channel failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Socket error.
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    /// A message did not decode.
    #[error("undecodable control message: {0}")]
    Decode(#[from] postcard::Error),
    /// The peer closed the channel.
    #[error("control channel closed by the peer")]
    Closed,
    /// The peer speaks another protocol version.
    #[error("peer speaks control protocol {theirs}, we speak {ours}")]
    VersionMismatch {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The peer refused us.
    #[error("peer refused the connection: {reason}")]
    Refused {
        /// Why, in its words.
        reason: String,
        /// Whether starting it again cannot help (see [`ControlMessage::Refused`]).
        permanent: bool,
    },
    /// The peer said something out of turn.
    #[error("unexpected control message: {0}")]
    Unexpected(String),
    /// The peer did not answer in time.
    #[error("control peer did not answer within {0:?}")]
    Timeout(Duration),
}

/// A framed control connection.
#[derive(Debug)]
pub struct ControlChannel {
    framed: Framed<UnixStream, LengthDelimitedCodec>,
}

/// A connected, close-on-exec socket pair: keep one end, give the other to the child.
pub fn socket_pair() -> std::io::Result<(StdUnixStream, StdUnixStream)> {
    StdUnixStream::pair()
}

impl ControlChannel {
    /// Wraps one end of a [`socket_pair`] (must be called inside a tokio runtime).
    pub fn from_std(stream: StdUnixStream) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_CONTROL_MESSAGE)
            .new_codec();
        Ok(Self {
            framed: Framed::new(UnixStream::from_std(stream)?, codec),
        })
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &ControlMessage) -> Result<(), ControlError> {
        let bytes = postcard::to_stdvec(message)?;
        self.framed
            .send(tokio_util::bytes::Bytes::from(bytes))
            .await?;
        Ok(())
    }

    /// Receives one message; `Err(Closed)` at end of stream.
    pub async fn recv(&mut self) -> Result<ControlMessage, ControlError> {
        match self.framed.next().await {
            Some(frame) => Ok(postcard::from_bytes(&frame?)?),
            None => Err(ControlError::Closed),
        }
    }

    /// Exchanges `Hello`s: sends ours, checks theirs. On a version mismatch
    /// the peer is told why before the error is returned.
    pub async fn handshake(
        &mut self,
        role: Role,
        replica: u32,
        timeout: Duration,
    ) -> Result<ControlMessage, ControlError> {
        let hello = ControlMessage::Hello {
            protocol_version: PROTOCOL_VERSION,
            role,
            replica,
            pid: std::process::id(),
        };
        self.send(&hello).await?;
        let theirs = tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ControlError::Timeout(timeout))??;
        match theirs {
            ControlMessage::Hello {
                protocol_version, ..
            } if protocol_version != PROTOCOL_VERSION => {
                let error = ControlError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs: protocol_version,
                };
                let _ = self
                    .send(&ControlMessage::Refused {
                        reason: error.to_string(),
                        permanent: true,
                    })
                    .await;
                Err(error)
            }
            hello @ ControlMessage::Hello { .. } => Ok(hello),
            ControlMessage::Refused { reason, permanent } => {
                Err(ControlError::Refused { reason, permanent })
            }
            other => Err(ControlError::Unexpected(format!("{other:?} before Hello"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_then_messages() {
        let (a, b) = socket_pair().unwrap();
        let mut sup = ControlChannel::from_std(a).unwrap();
        let mut worker = ControlChannel::from_std(b).unwrap();
        let t = Duration::from_secs(2);
        let (s, w) = tokio::join!(
            sup.handshake(Role::Supervisor, 0, t),
            worker.handshake(Role::Model, 2, t)
        );
        assert!(matches!(
            w.unwrap(),
            ControlMessage::Hello {
                role: Role::Supervisor,
                ..
            }
        ));
        assert!(matches!(
            s.unwrap(),
            ControlMessage::Hello {
                role: Role::Model,
                replica: 2,
                ..
            }
        ));
        let config = ControlMessage::Config(WorkerConfig {
            max_length: 512,
            heartbeat_ms: 1000,
            job: WorkerJob::Tokenizer {
                tokenizers: vec![
                    Some(TokenizerSpec {
                        file: "m/tokenizer.json".into(),
                        max_length: 512,
                        prompt: Some(ce_model_spec::PromptTemplate::qwen3_reranker()),
                    }),
                    None,
                ],
                threads: 2,
            },
        });
        sup.send(&config).await.unwrap();
        assert_eq!(worker.recv().await.unwrap(), config);
        drop(sup);
        assert!(matches!(worker.recv().await, Err(ControlError::Closed)));
    }

    #[tokio::test]
    async fn version_mismatch_is_refused_clearly() {
        let (a, b) = socket_pair().unwrap();
        let mut sup = ControlChannel::from_std(a).unwrap();
        let mut old_worker = ControlChannel::from_std(b).unwrap();
        old_worker
            .send(&ControlMessage::Hello {
                protocol_version: 999,
                role: Role::Model,
                replica: 0,
                pid: 1,
            })
            .await
            .unwrap();
        let e = sup
            .handshake(Role::Supervisor, 0, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(
            matches!(e, ControlError::VersionMismatch { theirs: 999, .. }),
            "{e}"
        );
        // The old worker hears our Hello, then the refusal with the reason.
        assert!(matches!(
            old_worker.recv().await.unwrap(),
            ControlMessage::Hello { .. }
        ));
        match old_worker.recv().await.unwrap() {
            ControlMessage::Refused { reason, permanent } => {
                assert!(reason.contains("999"), "{reason}");
                assert!(permanent, "another protocol stays another protocol");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        use tokio::io::AsyncWriteExt;
        let (a, b) = socket_pair().unwrap();
        let mut sup = ControlChannel::from_std(a).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut raw = UnixStream::from_std(b).unwrap();
        raw.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
            .await
            .unwrap();
        assert!(matches!(sup.recv().await, Err(ControlError::Decode(_))));
        raw.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        assert!(matches!(sup.recv().await, Err(ControlError::Io(_))));
    }
}
