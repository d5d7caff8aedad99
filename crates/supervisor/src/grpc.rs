//! The gRPC front end: `ce.v1.CrossEncoder`, translating protobuf messages
//! to and from the [`Api`].

use std::pin::Pin;
use std::time::{Duration, Instant};

use ce_proto::v1::cross_encoder_server::CrossEncoder;
use ce_proto::v1::{
    InfoRequest, InfoResponse, ModelInfo, Rank, ReplicaInfo, RerankRequest, RerankResponse,
    ScoreRequest, ScoreResponse, ScoreTokensRequest, StreamPair, StreamScore, Timing,
    TokenizeRequest, TokenizeResponse, TokenizedPair, TruncationDirection,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokenizer_worker::Truncation;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::{self, Api, ApiError, Chunking, RerankInput, ScoreList, Side};
use crate::request;

/// The `CrossEncoder` service.
#[derive(Debug, Clone)]
pub struct CrossEncoderService {
    api: Api,
}

impl CrossEncoderService {
    /// A service over `api`.
    pub fn new(api: Api) -> Self {
        Self { api }
    }

    /// Runs one unary call within the client's deadline, recorded under
    /// `method` and the model the request names (`model_of`).
    async fn unary<Req, Resp, Work>(
        &self,
        method: &str,
        request: Request<Req>,
        model_of: impl Fn(&Req) -> &str,
        work: impl FnOnce(Api, Req) -> Work,
    ) -> Result<Response<Resp>, Status>
    where
        Work: Future<Output = Result<Resp, ApiError>>,
    {
        let deadline = client_deadline(request.metadata());
        let request = request.into_inner();
        let model = model_of(&request).to_string();
        let call = work(self.api.clone(), request);
        self.api
            .recorded(method, Some(&model), deadline, call)
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }
}

/// The deadline a gRPC client set (`grpc-timeout`: digits and a unit).
pub fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// How `Info` spells an activation (`sigmoid`, `softmax`, `identity`).
fn activation_name(activation: ce_model_spec::ScoreActivation) -> String {
    format!("{activation:?}").to_lowercase()
}

/// The truncation a request asked for.
pub fn truncation(truncate: Option<bool>, direction: i32) -> Result<Truncation, ApiError> {
    let side = match TruncationDirection::try_from(direction) {
        Ok(TruncationDirection::Left) => Side::Left,
        Ok(_) => Side::Right,
        Err(_) => {
            return Err(ApiError::InvalidArgument(format!(
                "truncation_direction: unknown value {direction} (RIGHT = 1, LEFT = 2)"
            )));
        }
    };
    Ok(api::truncation(truncate, side))
}

/// A request's `model`: empty is the default.
fn model_name(model: &str) -> Option<&str> {
    Some(model).filter(|m| !m.is_empty())
}

fn pairs_of(pairs: Vec<ce_proto::v1::Pair>) -> Vec<(String, String)> {
    pairs.into_iter().map(|p| (p.query, p.passage)).collect()
}

fn timing(t: request::Timing) -> Timing {
    Timing {
        tokenize_us: t.tokenize.as_micros() as u64,
        queue_us: t.queue.as_micros() as u64,
        inference_us: t.inference.as_micros() as u64,
        total_us: t.total.as_micros() as u64,
    }
}

fn score_response(list: ScoreList) -> ScoreResponse {
    ScoreResponse {
        scores: list.scores,
        timing: Some(timing(list.timing)),
        tokens: list.tokens as u32,
    }
}

type ScoreStream = Pin<Box<dyn futures_util::Stream<Item = Result<StreamScore, Status>> + Send>>;

#[tonic::async_trait]
impl CrossEncoder for CrossEncoderService {
    async fn rerank(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        self.unary(
            "rerank",
            request,
            |r| &r.model,
            |api, r| async move {
                let chunked = r.chunk_long_documents
                    || r.max_chunks_per_doc.is_some()
                    || r.max_tokens_per_doc.is_some();
                let input = RerankInput {
                    model: model_name(&r.model).map(String::from),
                    truncation: truncation(r.truncate, r.truncation_direction)?,
                    query: r.query,
                    documents: r.documents,
                    raw_scores: r.raw_scores,
                    return_documents: r.return_documents,
                    top_n: r.top_n.map(|n| n as usize),
                    chunking: chunked.then_some(Chunking {
                        max_chunks: r.max_chunks_per_doc.map(|n| n as usize),
                        max_tokens: r.max_tokens_per_doc.map(|n| n as usize),
                    }),
                    instruction: r.instruction,
                };
                let ranking = api.rerank(input).await?;
                Ok(RerankResponse {
                    ranks: ranking
                        .ranks
                        .into_iter()
                        .map(|r| Rank {
                            index: r.index as u32,
                            score: r.score,
                            document: r.document,
                            chunk_start: r.chunk.map(|c| c.start),
                            chunk_end: r.chunk.map(|c| c.end),
                            chunks: r.chunk.map_or(0, |c| c.windows as u32),
                        })
                        .collect(),
                    timing: Some(timing(ranking.timing)),
                    tokens: ranking.tokens as u32,
                })
            },
        )
        .await
    }

    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.unary(
            "score",
            request,
            |r| &r.model,
            |api, r| async move {
                let truncation = truncation(r.truncate, r.truncation_direction)?;
                let list = api
                    .score(
                        model_name(&r.model),
                        pairs_of(r.pairs),
                        truncation,
                        r.raw_scores,
                        r.instruction,
                    )
                    .await?;
                Ok(score_response(list))
            },
        )
        .await
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        self.unary(
            "tokenize",
            request,
            |r| &r.model,
            |api, r| async move {
                let started = Instant::now();
                let truncation = truncation(r.truncate, r.truncation_direction)?;
                let batch = api
                    .tokenize(
                        model_name(&r.model),
                        pairs_of(r.pairs),
                        truncation,
                        r.instruction,
                    )
                    .await?;
                let elapsed = started.elapsed().as_micros() as u64;
                Ok(TokenizeResponse {
                    lengths: (0..batch.len()).map(|i| batch.seq_len(i) as u32).collect(),
                    pairs: if r.return_tokens {
                        (0..batch.len())
                            .map(|i| TokenizedPair {
                                input_ids: batch.ids(i).to_vec(),
                                type_ids: batch.types(i).to_vec(),
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    timing: Some(Timing {
                        tokenize_us: elapsed,
                        total_us: elapsed,
                        ..Default::default()
                    }),
                    tokens: batch.total_tokens() as u32,
                })
            },
        )
        .await
    }

    async fn score_tokens(
        &self,
        request: Request<ScoreTokensRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.unary(
            "score_tokens",
            request,
            |r| &r.model,
            |api, r| async move {
                let pairs: Vec<(Vec<u32>, Vec<u32>)> = r
                    .pairs
                    .into_iter()
                    .map(|p| (p.input_ids, p.type_ids))
                    .collect();
                Ok(score_response(
                    api.score_tokens(model_name(&r.model), &pairs, r.raw_scores)
                        .await?,
                ))
            },
        )
        .await
    }

    type RerankStreamStream = ScoreStream;

    async fn rerank_stream(
        &self,
        request: Request<Streaming<StreamPair>>,
    ) -> Result<Response<ScoreStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<StreamScore, Status>>(64);
        // Pairs of one stream being scored at most: beyond it we stop reading
        // the client's stream, which pushes back through HTTP/2 flow control.
        let window = 2 * self.api.core().settings.max_batch_size;
        tokio::spawn(stream_scores(self.api.clone(), inbound, tx, window));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let info = self.api.info();
        Ok(Response::new(InfoResponse {
            version: info.version.into(),
            model: info.model,
            max_length: info.max_length as u32,
            max_documents: info.max_documents as u32,
            max_input_chars: info.max_input_chars as u32,
            max_batch_tokens: info.max_batch_tokens as u32,
            tokenizers: info.tokenizers as u32,
            replicas: info
                .replicas
                .into_iter()
                .map(|r| {
                    let gpu = r.gpu.unwrap_or(crate::api::GpuInfo {
                        name: String::new(),
                        compute_capability: String::new(),
                        memory_total_bytes: 0,
                        memory_used_bytes: None,
                    });
                    ReplicaInfo {
                        replica: r.replica as u32,
                        model: r.model,
                        dtype: r.dtype,
                        device: r.device,
                        serving: r.serving,
                        model_name: r.model_name,
                        kernel: r.kernel,
                        error: r.error.unwrap_or_default(),
                        gpu: gpu.name,
                        compute_capability: gpu.compute_capability,
                        gpu_memory_total_bytes: gpu.memory_total_bytes,
                        gpu_memory_used_bytes: gpu.memory_used_bytes.unwrap_or(0),
                    }
                })
                .collect(),
            score_activation: activation_name(info.score_activation),
            models: info
                .models
                .into_iter()
                .map(|m| ModelInfo {
                    name: m.name,
                    source: m.source,
                    is_default: m.default,
                    max_length: m.max_length as u32,
                    score_activation: m.score_activation.map(activation_name).unwrap_or_default(),
                    replicas: m.replicas.iter().map(|&s| s as u32).collect(),
                    serving: m.serving as u32,
                    error: m.error,
                    prompt_template: m.prompt_template,
                    default_instruction: m.default_instruction,
                })
                .collect(),
            max_chunks_per_doc: info.max_chunks_per_doc as u32,
        }))
    }
}

/// Answers each pair of a stream as soon as it is scored, at most `window`
/// at a time; ends when the client has sent everything and all is
/// answered, or as soon as the client goes away (dropping the work).
async fn stream_scores(
    api: Api,
    mut inbound: Streaming<StreamPair>,
    tx: mpsc::Sender<Result<StreamScore, Status>>,
    window: usize,
) {
    let mut running = FuturesUnordered::new();
    let mut inbound_open = true;
    loop {
        if !inbound_open && running.is_empty() {
            return;
        }
        tokio::select! {
            next = inbound.next(), if inbound_open && running.len() < window => match next {
                Some(Ok(pair)) => {
                    let api = api.clone();
                    running.push(async move {
                        let id = pair.id;
                        let model = model_name(&pair.model).map(String::from);
                        let call = api.score_one(
                            model.as_deref(),
                            id,
                            pair.query,
                            pair.passage,
                            pair.raw_scores,
                            pair.instruction,
                        );
                        api.recorded("stream", model.as_deref(), None, call)
                            .await
                            .map(|score| StreamScore { id, score })
                            .map_err(|e| e.to_status())
                    });
                }
                Some(Err(status)) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                None => inbound_open = false,
            },
            Some(done) = running.next(), if !running.is_empty() => {
                if tx.send(done).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            else => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(client_deadline(&m), None);
        for (v, d) in [
            ("250m", Duration::from_millis(250)),
            ("3S", Duration::from_secs(3)),
            ("7u", Duration::from_micros(7)),
        ] {
            m.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(client_deadline(&m), Some(d));
        }
        m.insert("grpc-timeout", "12x".parse().unwrap());
        assert_eq!(client_deadline(&m), None);
    }

    #[test]
    fn truncation_follows_the_request() {
        assert_eq!(truncation(None, 0), Ok(Truncation::Right));
        assert_eq!(
            truncation(Some(true), TruncationDirection::Left as i32),
            Ok(Truncation::Left)
        );
        assert_eq!(
            truncation(Some(false), TruncationDirection::Left as i32),
            Ok(Truncation::Off)
        );
        assert!(
            matches!(truncation(None, 7), Err(ApiError::InvalidArgument(m)) if m.contains("truncation_direction"))
        );
    }
}
