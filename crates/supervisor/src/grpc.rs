//! The gRPC front end: `ce.v1.CrossEncoder` over [`Core`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_proto::v1::cross_encoder_server::CrossEncoder;
use ce_proto::v1::{
    InfoRequest, InfoResponse, Pair, Rank, ReplicaInfo, RerankRequest, RerankResponse,
    ScoreRequest, ScoreResponse, ScoreTokensRequest, StreamPair, StreamScore, Timing,
    TokenizeRequest, TokenizeResponse, TokenizedPair, TruncationDirection,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokenizer_worker::Truncation;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::core::{Core, PairsInput};
use crate::request::{ApiError, Scored};

/// The `CrossEncoder` service.
#[derive(Debug, Clone)]
pub struct CrossEncoderService {
    core: Arc<Core>,
}

impl CrossEncoderService {
    /// A service over `core`.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Runs one unary call within the client's deadline and records it in
    /// `inference_requests_total` under `method`.
    async fn unary<Req, Resp, Work>(
        &self,
        method: &str,
        request: Request<Req>,
        work: impl FnOnce(Arc<Core>, Req) -> Work,
    ) -> Result<Response<Resp>, Status>
    where
        Work: std::future::Future<Output = Result<Resp, ApiError>>,
    {
        let started = Instant::now();
        let deadline = client_deadline(request.metadata());
        let result = within(deadline, work(self.core.clone(), request.into_inner())).await;
        self.finish(method, started, result)
    }

    fn finish<T>(
        &self,
        method: &str,
        started: Instant,
        result: Result<T, ApiError>,
    ) -> Result<Response<T>, Status> {
        let status = result
            .as_ref()
            .map_or_else(ApiError::status_label, |_| "ok");
        self.core
            .metrics
            .observe_request(method, status, started.elapsed().as_secs_f64());
        result.map(Response::new).map_err(|e| e.to_status())
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

/// Runs `work` within the client's deadline. tonic itself cuts a call at
/// the deadline with CANCELLED; answering a little earlier gives the
/// client the DEADLINE_EXCEEDED it expects. Dropping `work` abandons the
/// request, so its queued pairs are never computed.
async fn within<T>(
    deadline: Option<Duration>,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    const MARGIN: Duration = Duration::from_millis(5);
    match deadline {
        Some(d) => tokio::time::timeout(d.saturating_sub(MARGIN), work)
            .await
            .unwrap_or_else(|_| {
                Err(ApiError::DeadlineExceeded(format!(
                    "deadline of {d:?} passed before the scores were ready"
                )))
            }),
        None => work.await,
    }
}

/// The truncation a request asked for.
pub fn truncation(truncate: Option<bool>, direction: i32) -> Result<Truncation, ApiError> {
    let direction = TruncationDirection::try_from(direction).map_err(|_| {
        ApiError::InvalidArgument(format!(
            "truncation_direction: unknown value {direction} (RIGHT = 1, LEFT = 2)"
        ))
    })?;
    Ok(if truncate == Some(false) {
        Truncation::Off
    } else if direction == TruncationDirection::Left {
        Truncation::Left
    } else {
        Truncation::Right
    })
}

/// Checks `pairs` and groups consecutive pairs that share a query.
fn pairs_input(
    core: &Core,
    pairs: Vec<Pair>,
    truncate: Option<bool>,
    direction: i32,
) -> Result<PairsInput, ApiError> {
    core.check_count("pairs", pairs.len())?;
    let truncation = truncation(truncate, direction)?;
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (i, pair) in pairs.into_iter().enumerate() {
        if pair.query.trim().is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "pairs[{i}].query: must not be empty"
            )));
        }
        core.check_text(&format!("pairs[{i}].query"), &pair.query)?;
        core.check_text(&format!("pairs[{i}].passage"), &pair.passage)?;
        match groups.last_mut() {
            Some((q, passages)) if *q == pair.query => passages.push(pair.passage),
            _ => groups.push((pair.query, vec![pair.passage])),
        }
    }
    Ok(PairsInput { groups, truncation })
}

/// Scores in input order, with the model's activation unless `raw`.
fn score_response(core: &Core, scored: &Scored, raw: bool) -> ScoreResponse {
    ScoreResponse {
        scores: scored
            .first_logits()
            .map(|l| core.client_score(l, raw))
            .collect(),
        timing: Some(timing(scored)),
        tokens: scored.tokens as u32,
    }
}

fn timing(scored: &Scored) -> Timing {
    let t = scored.timing;
    Timing {
        tokenize_us: t.tokenize.as_micros() as u64,
        queue_us: t.queue.as_micros() as u64,
        inference_us: t.inference.as_micros() as u64,
        total_us: t.total.as_micros() as u64,
    }
}

/// Scores every document against the query and orders them best first.
pub async fn rerank(
    core: &Core,
    query: String,
    documents: Vec<String>,
    truncation: Truncation,
) -> Result<(Scored, Vec<String>), ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::InvalidArgument("query: must not be empty".into()));
    }
    core.check_text("query", &query)?;
    core.check_count("documents", documents.len())?;
    for (i, d) in documents.iter().enumerate() {
        core.check_text(&format!("documents[{i}]"), d)?;
    }
    let input = PairsInput {
        groups: vec![(query, documents.clone())],
        truncation,
    };
    Ok((core.score(input).await?, documents))
}

/// Indices ordered by score, best first (ties keep input order), cut to
/// `top_n` (more than there are: all).
pub fn ranking(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    if let Some(n) = top_n {
        order.truncate(n);
    }
    order
}

type ScoreStream = Pin<Box<dyn futures_util::Stream<Item = Result<StreamScore, Status>> + Send>>;

#[tonic::async_trait]
impl CrossEncoder for CrossEncoderService {
    async fn rerank(
        &self,
        request: Request<RerankRequest>,
    ) -> Result<Response<RerankResponse>, Status> {
        self.unary("rerank", request, |core, r| async move {
            let trunc = truncation(r.truncate, r.truncation_direction)?;
            if r.top_n == Some(0) {
                return Err(ApiError::InvalidArgument(
                    "top_n: must be at least 1 (leave it out to rank every document)".into(),
                ));
            }
            let (scored, documents) = rerank(&core, r.query, r.documents, trunc).await?;
            let scores: Vec<f32> = scored
                .first_logits()
                .map(|l| core.client_score(l, r.raw_scores))
                .collect();
            let ranks = ranking(&scores, r.top_n.map(|n| n as usize))
                .into_iter()
                .map(|i| Rank {
                    index: i as u32,
                    score: scores[i],
                    document: r.return_documents.then(|| documents[i].clone()),
                })
                .collect();
            Ok(RerankResponse {
                ranks,
                timing: Some(timing(&scored)),
                tokens: scored.tokens as u32,
            })
        })
        .await
    }

    async fn score(
        &self,
        request: Request<ScoreRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.unary("score", request, |core, r| async move {
            let input = pairs_input(&core, r.pairs, r.truncate, r.truncation_direction)?;
            let scored = core.score(input).await?;
            Ok(score_response(&core, &scored, r.raw_scores))
        })
        .await
    }

    async fn tokenize(
        &self,
        request: Request<TokenizeRequest>,
    ) -> Result<Response<TokenizeResponse>, Status> {
        self.unary("tokenize", request, |core, r| async move {
            let started = Instant::now();
            let input = pairs_input(&core, r.pairs, r.truncate, r.truncation_direction)?;
            let batch = core.tokenize(input).await?;
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
        })
        .await
    }

    async fn score_tokens(
        &self,
        request: Request<ScoreTokensRequest>,
    ) -> Result<Response<ScoreResponse>, Status> {
        self.unary("score_tokens", request, |core, r| async move {
            core.check_count("pairs", r.pairs.len())?;
            let tokens = r.pairs.iter().map(|p| p.input_ids.len()).sum();
            let mut batch = TokenBatch::with_capacity(r.pairs.len(), tokens);
            for (i, pair) in r.pairs.iter().enumerate() {
                core.check_tokens(&format!("pairs[{i}]"), &pair.input_ids, &pair.type_ids)?;
                batch.push(&pair.input_ids, &pair.type_ids);
            }
            let scored = core.score_tokens(batch).await?;
            Ok(score_response(&core, &scored, r.raw_scores))
        })
        .await
    }

    type RerankStreamStream = ScoreStream;

    async fn rerank_stream(
        &self,
        request: Request<Streaming<StreamPair>>,
    ) -> Result<Response<ScoreStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<StreamScore, Status>>(64);
        let core = self.core.clone();
        // Pairs of one stream being scored at most: beyond it we stop reading
        // the client's stream, which pushes back through HTTP/2 flow control.
        let window = 2 * core.settings.max_batch_size;
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            let mut inbound_open = true;
            loop {
                if !inbound_open && running.is_empty() {
                    // Everything asked was answered: end the response stream.
                    return;
                }
                tokio::select! {
                    next = inbound.next(), if inbound_open && running.len() < window => match next {
                        Some(Ok(pair)) => {
                            let core = core.clone();
                            running.push(async move {
                                let started = Instant::now();
                                let result = if pair.query.trim().is_empty() {
                                    Err(ApiError::InvalidArgument(format!("pair {}: query must not be empty", pair.id)))
                                } else {
                                    let input = PairsInput { groups: vec![(pair.query, vec![pair.passage])], truncation: Truncation::Right };
                                    core.score(input).await.map(|s| {
                                        let logit = s.first_logits().next().unwrap_or(f32::NAN);
                                        StreamScore { id: pair.id, score: core.client_score(logit, pair.raw_scores) }
                                    })
                                };
                                let status = result.as_ref().map_or_else(ApiError::status_label, |_| "ok");
                                core.metrics.observe_request("stream", status, started.elapsed().as_secs_f64());
                                result.map_err(|e| e.to_status())
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
                            // The client went away: dropping `running` drops its work.
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let core = &self.core;
        let replicas = core
            .replica_status()
            .await
            .into_iter()
            .map(|r| ReplicaInfo {
                replica: r.index as u32,
                model: r.plan.model,
                dtype: r.plan.dtype,
                device: r.plan.device,
                serving: r.serving,
            })
            .collect();
        Ok(Response::new(InfoResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            model: core.served.model.clone(),
            max_length: core.served.max_length as u32,
            max_documents: core.settings.max_documents as u32,
            max_input_chars: core.settings.max_input_chars as u32,
            max_batch_tokens: core.settings.max_batch_tokens as u32,
            tokenizers: core.settings.tokenizers as u32,
            replicas,
            score_activation: format!("{:?}", core.served.activation).to_lowercase(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_best_first_stable_and_cut() {
        assert_eq!(ranking(&[0.1, 0.9, 0.5, 0.9], None), vec![1, 3, 2, 0]);
        assert_eq!(ranking(&[0.1, 0.9, 0.5], Some(2)), vec![1, 2]);
        assert_eq!(ranking(&[0.1, 0.9], Some(5)), vec![1, 0]);
    }

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
