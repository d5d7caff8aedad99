//! What one benchmark request calls, and over what: the four gRPC methods
//! that isolate the pipeline's stages (Rerank and Score run it whole,
//! Tokenize only the tokenizer stage, ScoreTokens only the model stage),
//! or HTTP's `/rerank`. Requests are built once before the load, so the
//! client's own work stays out of the measurement.

use std::time::Duration;

use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use ce_proto::v1::{
    Pair, RerankRequest, ScoreRequest, ScoreTokensRequest, Timing, TokenizeRequest,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::workload::Request;

/// Which API a request calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `Rerank`: the whole pipeline, one query against its passages.
    #[default]
    Rerank,
    /// `Score`: the whole pipeline, explicit pairs.
    Score,
    /// `Tokenize`: the tokenizer stage alone (lengths only come back).
    Tokenize,
    /// `ScoreTokens`: the model stage alone, on ids tokenized once before
    /// the load.
    ScoreTokens,
}

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// gRPC (HTTP/2, one channel shared by every client task).
    #[default]
    Grpc,
    /// HTTP/1.1 JSON `POST /rerank`, one keep-alive connection per client task.
    Http,
}

/// Why a benchmark cannot run its calls.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The combination does not exist.
    #[error("{0}")]
    Unsupported(String),
    /// Tokenizing the requests for `ScoreTokens` failed.
    #[error("preparing ScoreTokens requests: {0}")]
    Prepare(tonic::Status),
}

/// Where requests go.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A gRPC client.
    Grpc(CrossEncoderClient<Channel>),
    /// An HTTP server, `host:port`.
    Http(String),
}

/// Every request of the load, ready to send.
#[derive(Debug)]
pub enum Prepared {
    /// gRPC `Rerank`.
    Rerank(Vec<RerankRequest>),
    /// gRPC `Score`.
    Score(Vec<ScoreRequest>),
    /// gRPC `Tokenize`.
    Tokenize(Vec<TokenizeRequest>),
    /// gRPC `ScoreTokens`.
    ScoreTokens(Vec<ScoreTokensRequest>),
    /// HTTP `/rerank` JSON bodies.
    HttpRerank(Vec<Bytes>),
}

fn pairs_of(r: &Request) -> Vec<Pair> {
    r.passages
        .iter()
        .map(|p| Pair {
            query: r.query.clone(),
            passage: p.clone(),
        })
        .collect()
}

impl Prepared {
    /// Builds the requests for `call` over `endpoint`. `ScoreTokens` asks
    /// the server's `Tokenize` for the ids once, here.
    pub async fn new(
        call: Call,
        endpoint: &Endpoint,
        requests: &[Request],
    ) -> Result<Self, ClientError> {
        Ok(match (endpoint, call) {
            (Endpoint::Http(_), Call::Rerank) => Prepared::HttpRerank(
                requests
                    .iter()
                    .map(|r| {
                        Bytes::from(
                            serde_json::json!({ "query": r.query, "texts": r.passages })
                                .to_string(),
                        )
                    })
                    .collect(),
            ),
            (Endpoint::Http(_), other) => {
                return Err(ClientError::Unsupported(format!(
                    "call {other:?} is gRPC only; HTTP serves rerank"
                )));
            }
            (Endpoint::Grpc(_), Call::Rerank) => {
                Prepared::Rerank(requests.iter().map(Request::to_rerank).collect())
            }
            (Endpoint::Grpc(_), Call::Score) => Prepared::Score(
                requests
                    .iter()
                    .map(|r| ScoreRequest {
                        pairs: pairs_of(r),
                        ..Default::default()
                    })
                    .collect(),
            ),
            (Endpoint::Grpc(_), Call::Tokenize) => Prepared::Tokenize(
                requests
                    .iter()
                    .map(|r| TokenizeRequest {
                        pairs: pairs_of(r),
                        ..Default::default()
                    })
                    .collect(),
            ),
            (Endpoint::Grpc(client), Call::ScoreTokens) => {
                let mut client = client.clone();
                let mut prepared = Vec::with_capacity(requests.len());
                for r in requests {
                    let tokenized = client
                        .tokenize(TokenizeRequest {
                            pairs: pairs_of(r),
                            return_tokens: true,
                            ..Default::default()
                        })
                        .await
                        .map_err(ClientError::Prepare)?
                        .into_inner();
                    prepared.push(ScoreTokensRequest {
                        pairs: tokenized.pairs,
                        ..Default::default()
                    });
                }
                Prepared::ScoreTokens(prepared)
            }
        })
    }

    /// Requests prepared.
    pub fn len(&self) -> usize {
        match self {
            Prepared::Rerank(v) => v.len(),
            Prepared::Score(v) => v.len(),
            Prepared::Tokenize(v) => v.len(),
            Prepared::ScoreTokens(v) => v.len(),
            Prepared::HttpRerank(v) => v.len(),
        }
    }

    /// True with none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one answered request reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Pairs it carried.
    pub pairs: u64,
    /// The server's tokenize/queue/inference split in µs, when it says.
    pub server_us: Option<[u64; 3]>,
}

/// A gRPC answer of `pairs` pairs with the server's split.
fn answered(pairs: usize, timing: Option<Timing>) -> Answered {
    Answered {
        pairs: pairs as u64,
        server_us: timing.map(|t| [t.tokenize_us, t.queue_us, t.inference_us]),
    }
}

/// One client task's connection.
#[derive(Debug)]
pub struct Caller {
    endpoint: Endpoint,
    http: Option<SendRequest<Full<Bytes>>>,
}

/// How long an HTTP client waits for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Caller {
    /// A caller over `endpoint` (HTTP connects on first use).
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            http: None,
        }
    }

    /// Sends request `i` (modulo the count) and waits for its answer. The
    /// error is the status as the error table shows it (`Unavailable`,
    /// `http 503`, `connect`…).
    pub async fn call(&mut self, prepared: &Prepared, i: usize) -> Result<Answered, String> {
        let i = i % prepared.len().max(1);
        let grpc_error = |s: tonic::Status| format!("{:?}", s.code());
        match (&mut self.endpoint, prepared) {
            (Endpoint::Grpc(c), Prepared::Rerank(v)) => c
                .rerank(v[i].clone())
                .await
                .map(|r| answered(r.get_ref().ranks.len(), r.into_inner().timing))
                .map_err(grpc_error),
            (Endpoint::Grpc(c), Prepared::Score(v)) => c
                .score(v[i].clone())
                .await
                .map(|r| answered(r.get_ref().scores.len(), r.into_inner().timing))
                .map_err(grpc_error),
            (Endpoint::Grpc(c), Prepared::Tokenize(v)) => c
                .tokenize(v[i].clone())
                .await
                .map(|r| answered(r.get_ref().lengths.len(), r.into_inner().timing))
                .map_err(grpc_error),
            (Endpoint::Grpc(c), Prepared::ScoreTokens(v)) => c
                .score_tokens(v[i].clone())
                .await
                .map(|r| answered(r.get_ref().scores.len(), r.into_inner().timing))
                .map_err(grpc_error),
            (Endpoint::Http(addr), Prepared::HttpRerank(v)) => {
                let addr = addr.clone();
                let result = self.http_rerank(&addr, v[i].clone()).await;
                if result.is_err() {
                    // A failed exchange may leave the connection unusable.
                    self.http = None;
                }
                result
            }
            _ => Err("unsupported".into()),
        }
    }

    async fn http_rerank(&mut self, addr: &str, body: Bytes) -> Result<Answered, String> {
        let sender = match &mut self.http {
            Some(s) if !s.is_closed() => s,
            _ => self.http.insert(http_connect(addr).await?),
        };
        sender.ready().await.map_err(|_| "connection".to_string())?;
        let request = hyper::Request::post(format!("http://{addr}/rerank"))
            .header(hyper::header::HOST, addr)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|_| "connection".to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| "connection".to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("http {}", status.as_u16()));
        }
        let ranks: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|_| "bad json".to_string())?;
        Ok(Answered {
            pairs: ranks.len() as u64,
            server_us: None,
        })
    }
}

async fn http_connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, String> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect".to_string())?
        .map_err(|_| "connect".to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| "connect".to_string())?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes.
        let _ = connection.await;
    });
    Ok(sender)
}
