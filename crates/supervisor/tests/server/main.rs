//! The real `ce-supervisor` with real workers, called through a tonic
//! client and over HTTP: one test binary, a module per concern, sharing the
//! helpers below and the harness in `support`.

#[path = "../support/mod.rs"]
mod support;

mod auth_tls;
mod families;
mod faults;
mod gpu;
mod hardening;
mod health_shutdown;
mod http_api;
mod rerank_apis;
mod scoring;
mod streaming;
mod validation;

use std::time::Duration;

use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use ce_proto::v1::{Pair, RerankRequest, ScoreRequest, StreamPair};
use support::{
    Server, engine_logits, engine_logits_for, engine_logits_in, fixture, http, score_request,
};
use tonic::Code;

fn fixture_pairs() -> Vec<(String, String)> {
    fixture()
        .pairs
        .into_iter()
        .map(|p| (p.query, p.passage))
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5,
            "{what}: pair {i}: served {g}, engine {w}"
        );
    }
}

/// `pairs` as the API's messages.
fn proto_pairs(pairs: &[(String, String)]) -> Vec<Pair> {
    pairs
        .iter()
        .map(|(q, p)| Pair {
            query: q.clone(),
            passage: p.clone(),
        })
        .collect()
}

/// A Score request for `pairs` asking for raw logits.
fn raw_scores_of(pairs: &[(String, String)]) -> ScoreRequest {
    ScoreRequest {
        pairs: proto_pairs(pairs),
        raw_scores: true,
        ..Default::default()
    }
}

type Requests = Vec<(String, Vec<String>)>;

/// Every (query, document) pair of the requests, in order.
fn flatten(requests: &Requests) -> Vec<(String, String)> {
    requests
        .iter()
        .flat_map(|(q, ds)| ds.iter().map(move |d| (q.clone(), d.clone())))
        .collect()
}

type ScoreTask = tokio::task::JoinHandle<Result<Vec<f32>, tonic::Status>>;

/// Sends every request at once, each from its own client.
async fn start_requests(server: &Server, requests: &Requests) -> Vec<ScoreTask> {
    let mut tasks = Vec::new();
    for (query, documents) in requests.clone() {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            client
                .score(score_request(&query, &documents))
                .await
                .map(|r| r.into_inner().scores)
        }));
    }
    tasks
}

/// Awaits the requests; each must succeed with the engine's scores (`want`, flattened).
async fn expect_engine_scores(
    tasks: Vec<ScoreTask>,
    requests: &Requests,
    want: &[f32],
    what: &str,
) {
    let mut at = 0;
    for (task, (_, documents)) in tasks.into_iter().zip(requests) {
        let scores = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: request failed: {e:?}"));
        assert_close(&scores, &want[at..at + documents.len()], what);
        at += documents.len();
    }
}

/// The token id of a one-token word (for the workers' test faults).
fn token_of(word: &str) -> u32 {
    let tokenizer = tokenizer_worker::PairTokenizer::from_file(
        &support::model_dir().join("tokenizer.json"),
        512,
    )
    .unwrap();
    let (ids, _) = tokenizer
        .encode_pair(word, "x", Default::default())
        .unwrap();
    assert_eq!(ids.len(), 5, "{word} is not one token: {ids:?}");
    ids[1]
}

/// Waits (at most 10 s, else fails with `why`) until at least `n` batches
/// are on replicas.
async fn wait_for_batches_in_flight(port: u16, n: usize, why: &str) {
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while support::metric(port, "inference_batches_in_flight") < n as f64 {
        assert!(std::time::Instant::now() < until, "{why}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (at most a minute) until no pair is queued and no batch is on a
/// replica; returns the pairs scored by then.
async fn wait_until_idle(port: u16) -> f64 {
    let state = || {
        (
            support::metric(port, "inference_pairs_total"),
            support::metric(port, "inference_queue_size"),
            support::metric(port, "inference_batches_in_flight"),
        )
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (scored, queued, in_flight) = state();
        if queued == 0.0 && in_flight == 0.0 {
            return scored;
        }
        assert!(
            std::time::Instant::now() < until,
            "work still queued or running: {:?}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
