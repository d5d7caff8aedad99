//! The real `ce-supervisor` with real workers, called through a tonic
//! client and over HTTP.

mod support;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_equal_the_engine_for_every_topology() {
    let pairs = fixture_pairs();
    let want = engine_logits(&pairs);
    for replicas in [1, 2, 3] {
        for tokenizers in [0, 1, 2] {
            let what = format!("replicas {replicas}, tokenizers {tokenizers}");
            let server = Server::start(&[
                "--replicas",
                &replicas.to_string(),
                "--tokenizers",
                &tokenizers.to_string(),
                // Small batches, so that every replica gets some of the work.
                "--max-batch-size",
                "16",
            ]);
            let mut client = server.client().await;
            let got = client
                .score(raw_scores_of(&pairs))
                .await
                .unwrap()
                .into_inner();
            assert_close(&got.scores, &want, &what);
            assert!(
                got.tokens > 0 && got.timing.is_some(),
                "{what}: tokens and timing reported"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i8_replicas_score_as_the_i8_engine_and_close_to_f32() {
    let pairs = fixture_pairs();
    let f32_logits = engine_logits(&pairs);
    let i8_logits = engine_logits_in(model_worker::WeightDType::I8, &pairs);

    // Two replicas and small batches: activations are quantized per token,
    // so how pairs are batched must not change a score.
    let server = Server::start(&["--dtype", "i8", "--replicas", "2", "--max-batch-size", "16"]);
    let mut client = server.client().await;
    let got = client
        .score(raw_scores_of(&pairs))
        .await
        .unwrap()
        .into_inner()
        .scores;
    assert_close(&got, &i8_logits, "i8 served vs i8 engine");
    let worst = got
        .iter()
        .zip(&f32_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 0.05, "i8 vs f32: max |logit difference| {worst}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_orders_cuts_and_returns_documents() {
    let server = Server::start(&["--replicas", "2", "--tokenizers", "1"]);
    let mut client = server.client().await;
    let query = "how do rust lifetimes work".to_string();
    let documents: Vec<String> = [
        "Lifetimes tell the Rust compiler how long references are valid.",
        "Bananas are rich in potassium.",
        "The borrow checker compares lifetimes of references.",
        "Paris is the capital of France.",
        "Iron rusts when exposed to water and oxygen.",
    ]
    .map(String::from)
    .to_vec();
    let want = engine_logits_for(&query, &documents);
    let mut order: Vec<usize> = (0..documents.len()).collect();
    order.sort_by(|&a, &b| want[b].total_cmp(&want[a]));
    let reply = client
        .rerank(RerankRequest {
            query: query.clone(),
            documents: documents.clone(),
            top_n: Some(3),
            return_documents: true,
            raw_scores: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply
            .ranks
            .iter()
            .map(|r| r.index as usize)
            .collect::<Vec<_>>(),
        order[..3]
    );
    for r in &reply.ranks {
        assert!((r.score - want[r.index as usize]).abs() <= 1e-5);
        assert_eq!(
            r.document.as_deref(),
            Some(documents[r.index as usize].as_str())
        );
    }
    // Without raw_scores the model's activation applies; without return_documents none come back.
    let reply = client
        .rerank(RerankRequest {
            query,
            documents,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.ranks.len(), 5);
    assert!(reply.ranks.iter().all(|r| r.document.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_clients_get_complete_correct_answers() {
    let server = Server::start(&[
        "--replicas",
        "2",
        "--tokenizers",
        "2",
        "--max-batch-size",
        "64",
    ]);
    let words = [
        "rust",
        "memory",
        "safety",
        "ownership",
        "borrow",
        "compiler",
        "thread",
        "async",
        "python",
        "speed",
    ];
    let requests: Vec<(String, Vec<String>)> = (0..24)
        .map(|r| {
            let n = [1, 3, 17, 40, 90][r % 5];
            let docs = (0..n)
                .map(|d| {
                    (0..(3 + (r * 7 + d * 3) % 25))
                        .map(|w| words[(r + d + w) % words.len()])
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            (
                format!(
                    "{} {}",
                    words[r % words.len()],
                    words[(r * 3) % words.len()]
                ),
                docs,
            )
        })
        .collect();
    let want = engine_logits(&flatten(&requests));
    let tasks = start_requests(&server, &requests).await;
    expect_engine_scores(tasks, &requests, &want, "concurrent request").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerank_stream_answers_each_pair_and_cancels() {
    let server = Server::start(&["--replicas", "1", "--tokenizers", "1"]);
    let mut client = server.client().await;
    let pairs: Vec<(String, String)> = (0..20)
        .map(|i| {
            (
                "what is rust".to_string(),
                format!("passage number {i} about rust and memory"),
            )
        })
        .collect();
    let want = engine_logits(&pairs);
    let outbound: Vec<StreamPair> = pairs
        .iter()
        .enumerate()
        .map(|(i, (q, p))| StreamPair {
            id: 100 + i as u64,
            query: q.clone(),
            passage: p.clone(),
            raw_scores: true,
        })
        .collect();
    let mut inbound = client
        .rerank_stream(tokio_stream::iter(outbound))
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    while let Some(score) = inbound.message().await.unwrap() {
        seen.insert(score.id, score.score);
    }
    assert_eq!(seen.len(), 20);
    for (i, w) in want.iter().enumerate() {
        assert!((seen[&(100 + i as u64)] - w).abs() <= 1e-5);
    }
    // Cancel: a never-ending stream of work, dropped after the first answer.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let feeder = tokio::spawn(async move {
        for id in 0.. {
            let pair = StreamPair {
                id,
                query: "q".into(),
                passage: "p ".repeat(30),
                raw_scores: true,
            };
            if tx.send(pair).await.is_err() {
                return;
            }
        }
    });
    let mut inbound = client
        .rerank_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(inbound.message().await.unwrap().is_some());
    let port = server.http_port;
    wait_for_batches_in_flight(port, 1, "a busy replica shows no batch in flight").await;
    drop(inbound);
    feeder.abort();
    // The server drops the stream's remaining work: the queue empties, the
    // batches already on the replica finish, and nothing new starts.
    let before = wait_until_idle(port).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        wait_until_idle(port).await,
        before,
        "the server kept scoring a cancelled stream"
    );
    // The server is still healthy and serves others at once.
    let reply = client
        .rerank(RerankRequest {
            query: "q".into(),
            documents: vec!["d".into()],
            ..Default::default()
        })
        .await;
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_speaks_text_embeddings_inference() {
    let server = Server::start(&["--tokenizers", "0"]);
    let body = r#"{"query":"what is rust","texts":["Rust is a language","bananas"],"raw_scores":true,"return_text":true}"#;
    let (status, reply) = http(server.http_port, "POST", "/rerank", Some(body)).unwrap();
    assert_eq!(status, 200, "{reply}");
    let ranks: Vec<serde_json::Value> = serde_json::from_str(&reply).unwrap();
    let want = engine_logits(&[
        ("what is rust".into(), "Rust is a language".into()),
        ("what is rust".into(), "bananas".into()),
    ]);
    assert_eq!(ranks.len(), 2);
    for r in &ranks {
        let i = r["index"].as_u64().unwrap() as usize;
        assert!((r["score"].as_f64().unwrap() as f32 - want[i]).abs() <= 1e-5);
        assert!(r["text"].is_string());
    }
    assert!(ranks[0]["score"].as_f64() >= ranks[1]["score"].as_f64());
    let (status, reply) = http(
        server.http_port,
        "POST",
        "/rerank",
        Some(r#"{"query":"","texts":["a"]}"#),
    )
    .unwrap();
    assert_eq!(status, 422, "{reply}");
    assert!(
        reply.contains("query") && reply.contains("Validation"),
        "{reply}"
    );
    let (status, info) = http(server.http_port, "GET", "/info", None).unwrap();
    assert_eq!(status, 200);
    assert!(info.contains("\"max_documents\""), "{info}");
    let (status, metrics) = http(server.http_port, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("inference_requests_total{"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_only_after_load_and_reflection_lists_the_api() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    // Model workers that take 1.5 s to start: a wrapper script execs the real one.
    let dir = tempfile::tempdir().unwrap();
    let real = support::bin_dir();
    std::os::unix::fs::symlink(
        real.join("ce-tokenizer-worker"),
        dir.path().join("ce-tokenizer-worker"),
    )
    .unwrap();
    let wrapper = dir.path().join("ce-model-worker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nsleep 1.5\nexec {} \"$@\"\n",
            real.join("ce-model-worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = Server::spawn(&[], dir.path());
    let endpoint = format!("http://127.0.0.1:{}", server.grpc_port);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut health = HealthClient::new(channel.clone());
    let check = || HealthCheckRequest {
        service: "ce.v1.CrossEncoder".into(),
    };
    let first = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(
        first,
        ServingStatus::NotServing as i32,
        "serving before the model loaded"
    );
    let (status, _) = http(server.http_port, "GET", "/health", None).unwrap();
    assert_eq!(status, 503);
    let mut client = server.client().await;
    let early = client
        .rerank(RerankRequest {
            query: "q".into(),
            documents: vec!["d".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(early.unwrap_err().code(), Code::Unavailable);
    server.wait_ready(Duration::from_secs(60));
    let now = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(now, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ce.v1.CrossEncoder".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_within_the_kubernetes_grace_period() {
    // The settings and grace period Kubernetes gets (deploy/kubernetes/).
    let manifests = support::workspace_root().join("deploy/kubernetes");
    let configmap = std::fs::read_to_string(manifests.join("configmap.yaml")).unwrap();
    let config: String = configmap
        .split_once("config.toml: |\n")
        .expect("the ConfigMap holds config.toml")
        .1
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let settings: toml::Table = config.parse().unwrap();
    let grace_ms = settings["shutdown_grace_ms"].as_integer().unwrap() as u64;
    let deployment = std::fs::read_to_string(manifests.join("deployment.yaml")).unwrap();
    let number_after = |key: &str| -> u64 {
        let at = deployment
            .find(key)
            .unwrap_or_else(|| panic!("{key} missing"))
            + key.len();
        deployment[at..]
            .trim_start_matches([':', ' ', '\n'])
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    let termination = Duration::from_secs(number_after("terminationGracePeriodSeconds"));
    let pre_stop = Duration::from_secs(number_after("sleep:\n                seconds"));
    // Drain, then at most 5 s for the workers to stop, after the preStop pause.
    assert!(
        pre_stop + Duration::from_millis(grace_ms) + Duration::from_secs(5) <= termination,
        "shutdown_grace_ms {grace_ms} + worker stop 5 s + preStop {pre_stop:?} exceed {termination:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    // This machine's share: one replica, whatever the pod gets.
    let mut server = Server::start(&[
        "--config",
        config_path.to_str().unwrap(),
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--threads-per-replica",
        "2",
        "--max-batch-size",
        "32",
    ]);
    let worker_pids: Vec<u32> = server.workers().into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(worker_pids.len(), 2, "one tokenizer and one model worker");
    let mut tasks = Vec::new();
    for r in 0..6 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let documents = (0..64)
                .map(|d| format!("document {d} of request {r} with some words in it"))
                .collect();
            client
                .rerank(RerankRequest {
                    query: "which request".into(),
                    documents,
                    ..Default::default()
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(termination - pre_stop);
        drop(server);
        s
    })
    .await
    .unwrap();
    for t in tasks {
        let reply = t
            .await
            .unwrap()
            .expect("in-flight request completes during shutdown");
        assert_eq!(reply.into_inner().ranks.len(), 64);
    }
    assert!(status.success(), "exit status {status:?}");
    for pid in worker_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the supervisor"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_are_replaced_and_no_request_fails() {
    let server = Server::start(&[
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--max-batch-size",
        "32",
    ]);
    let requests: Vec<(String, Vec<String>)> = (0..12)
        .map(|r| {
            (
                format!("query {r} about rust"),
                (0..40)
                    // ~60 tokens: the load must outlast the first kill.
                    .map(|d| {
                        format!(
                            "document {d} of {r} on memory safety {}",
                            "with ownership and borrowing rules ".repeat(9)
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let want = engine_logits(&flatten(&requests));
    let tasks = start_requests(&server, &requests).await;
    // SIGKILL the model worker mid-load, then the tokenizer worker.
    for name in ["ce-model-worker", "ce-tokenizer-w"] {
        tokio::time::sleep(Duration::from_millis(400)).await;
        if name == "ce-model-worker" {
            assert!(
                tasks.iter().any(|t| !t.is_finished()),
                "every request answered before the kill: the load is too small to test anything"
            );
        }
        let (pid, _) = server
            .workers()
            .into_iter()
            .find(|(_, n)| n.starts_with(name))
            .expect("worker running");
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
    }
    expect_engine_scores(tasks, &requests, &want, "request across a worker death").await;
    // The tokenizer's replacement may still be starting when the last
    // answer arrives (the model worker had finished its tokens).
    let restarts = |role: &str| {
        support::metric(
            server.http_port,
            &format!("worker_restarts_total{{role=\"{role}\"}}"),
        )
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while (restarts("model"), restarts("tokenizer")) != (1.0, 1.0) {
        assert!(
            std::time::Instant::now() < until
                && restarts("model") <= 1.0
                && restarts("tokenizer") <= 1.0,
            "restarts: model {}, tokenizer {}",
            restarts("model"),
            restarts("tokenizer")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.workers().len(), 2, "both slots are filled again");
}

#[test]
fn a_sigkilled_supervisor_takes_its_workers_with_it() {
    let mut server = Server::start(&["--replicas", "2", "--tokenizers", "2"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 4, "{workers:?}");
    let mut child = server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    // Gone = no longer running: a dead worker may linger as a zombie until
    // whoever adopted it (init, or a subreaper) reaps it.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    while workers.iter().any(|(pid, _)| running(pid)) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "workers outlived the supervisor by 1 s: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "all workers gone {:?} after the supervisor's SIGKILL",
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_is_killed_at_the_batch_deadline_and_replaced() {
    let server = Server::start(&[
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--max-batch-size",
        "16",
        "--batch-deadline-ms",
        "1500",
    ]);
    // ~100 tokens each: the request must still be running when the
    // replica is stopped 100 ms in, however fast the machine.
    let documents: Vec<String> = (0..64)
        .map(|d| {
            format!(
                "document {d} about hanging workers {}",
                "and the deadlines that find them ".repeat(15)
            )
        })
        .collect();
    let want = engine_logits_for("hang", &documents);
    let mut client = server.client().await;
    let request = score_request("hang", &documents);
    let call =
        tokio::spawn(async move { client.score(request).await.map(|r| r.into_inner().scores) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (pid, _) = server
        .workers()
        .into_iter()
        .find(|(_, n)| n == "ce-model-worker")
        .unwrap();
    let stopped = std::time::Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    let scores = call
        .await
        .unwrap()
        .expect("the request survives a hung replica");
    assert_close(&scores, &want, "after a hang");
    assert!(
        stopped.elapsed() >= Duration::from_millis(1000),
        "answered before the deadline could fire"
    );
    let (_, metrics) = http(server.http_port, "GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("worker_restarts_total{role=\"model\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_queued_behind_a_slow_one_is_not_blamed_for_the_wait() {
    // Batches holding "turtle" take 900 ms on the replica. Two of them go
    // to it at once: the second is answered 1.8 s after it was sent, but
    // the replica held it for only 0.9 s of the 1.5 s deadline.
    let slow_token = token_of("turtle");
    let server = Server::start_with_env(
        &[
            "--replicas",
            "1",
            "--tokenizers",
            "1",
            "--max-batch-size",
            "1",
            "--max-inflight-per-replica",
            "2",
            "--batch-deadline-ms",
            "1500",
        ],
        &[("CE_FAULT_DELAY_TOKEN", format!("{slow_token}:900"))],
    );
    let replica = server
        .workers()
        .into_iter()
        .find(|(_, n)| n == "ce-model-worker");
    let requests: Vec<(String, Vec<String>)> = (0..2)
        .map(|r| ("turtle".to_string(), vec![format!("slow document {r}")]))
        .collect();
    let want = engine_logits(&flatten(&requests));
    let tasks = start_requests(&server, &requests).await;
    let port = server.http_port;
    wait_for_batches_in_flight(
        port,
        2,
        "the two slow batches were never on the replica together",
    )
    .await;
    expect_engine_scores(tasks, &requests, &want, "slow batch").await;
    assert_eq!(
        support::metric(port, "worker_restarts_total{role=\"model\"}"),
        0.0,
        "a healthy replica was killed"
    );
    assert_eq!(
        server
            .workers()
            .into_iter()
            .find(|(_, n)| n == "ce-model-worker"),
        replica
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_deadline_is_deadline_exceeded_and_its_pairs_are_not_computed() {
    let server = Server::start(&[
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--max-batch-size",
        "32",
    ]);
    let mut client = server.client().await;
    let documents: Vec<String> = (0..1024)
        .map(|d| {
            format!(
                "document {d} that will never be scored in time {}",
                "because the deadline is short ".repeat(10)
            )
        })
        .collect();
    let mut request = tonic::Request::new(RerankRequest {
        query: "late".into(),
        documents,
        ..Default::default()
    });
    request.set_timeout(Duration::from_millis(400));
    let status = client.rerank(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let scored = || support::metric(server.http_port, "inference_pairs_total");
    // Batches already on the replica finish; the rest are dropped.
    let settled = wait_until_idle(server.http_port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(scored(), settled, "scoring went on after the deadline");
    assert!(
        settled < 1024.0 / 2.0,
        "{settled} of 1024 pairs computed after a 400 ms deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_scoring_but_not_health_or_metrics() {
    let server = Server::start(&["--tokenizers", "0", "--api-key", "s3cret"]);
    let mut client = server.client().await;
    let rerank = || RerankRequest {
        query: "q".into(),
        documents: vec!["d".into()],
        ..Default::default()
    };
    assert_eq!(
        client.rerank(rerank()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut wrong = tonic::Request::new(rerank());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(
        client.rerank(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(rerank());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(client.rerank(right).await.is_ok());
    let port = server.http_port;
    assert_eq!(
        http(
            port,
            "POST",
            "/rerank",
            Some(r#"{"query":"q","texts":["a"]}"#)
        )
        .unwrap()
        .0,
        401
    );
    assert_eq!(http(port, "GET", "/info", None).unwrap().0, 401);
    assert_eq!(http(port, "GET", "/health", None).unwrap().0, 200);
    assert_eq!(http(port, "GET", "/metrics", None).unwrap().0, 200);
    let authorized = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"query":"q","texts":["a"]}"#;
        write!(
            s,
            "POST /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer s3cret\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        response
    };
    assert!(authorized.starts_with("HTTP/1.1 200"), "{authorized}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_start_is_reported_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pool.toml");
    let model = support::model_dir();
    std::fs::write(
        &config,
        format!(
            "[[instances]]\nmodel = \"/nonexistent/broken-model\"\n\n[[instances]]\nmodel = {:?}\n",
            model.display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap(), "--tokenizers", "1"]);
    let (status, info) = http(server.http_port, "GET", "/info", None).unwrap();
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let broken = &info["replicas"][0];
    assert_eq!(broken["serving"], false, "{info}");
    assert!(
        broken["error"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/broken-model"),
        "{info}"
    );
    assert_eq!(info["replicas"][1]["serving"], true, "{info}");
    let mut client = server.client().await;
    let reply = client
        .rerank(support::two_document_rerank())
        .await
        .expect("the healthy replica serves");
    assert_eq!(reply.into_inner().ranks.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_fails_alone_and_its_batch_mates_succeed() {
    // The model worker aborts on any batch holding the token of "zebra";
    // the tokenizer worker on any job holding "giraffe".
    let poison_token = token_of("zebra");
    let env = [
        ("CE_FAULT_ABORT_TOKEN", poison_token.to_string()),
        ("CE_FAULT_ABORT_TEXT", "giraffe".to_string()),
    ];
    let server = Server::start_with_env(
        &[
            "--replicas",
            "1",
            "--tokenizers",
            "1",
            "--max-batch-size",
            "32",
            "--tokenize-chunk",
            "8",
        ],
        &env,
    );
    let bystanders: Vec<String> = (0..24)
        .map(|d| format!("bystander document {d} about memory"))
        .collect();
    let mut poisoned: Vec<String> = (0..8).map(|d| format!("other document {d}")).collect();
    poisoned[5] = "a zebra crosses the road".into();
    let mut unreadable = poisoned.clone();
    unreadable[5] = "a giraffe eats leaves".into();
    let want = engine_logits_for("safe query", &bystanders);
    let score = score_request;
    let (mut a, mut b, mut c) = (
        server.client().await,
        server.client().await,
        server.client().await,
    );
    let (bad_model, bad_tokens, good) = tokio::join!(
        a.score(score("poisoned query", &poisoned)),
        c.score(score("poisoned query", &unreadable)),
        b.score(score("safe query", &bystanders)),
    );
    let status = bad_model.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("model worker crashed")
            && status.message().contains("document 5"),
        "{status:?}"
    );
    let status = bad_tokens.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("tokenizer worker crashed")
            && status.message().contains("documents 0..8"),
        "{status:?}"
    );
    assert_close(
        &good
            .expect("batch mates of the poison succeed")
            .into_inner()
            .scores,
        &want,
        "bystanders",
    );
    // And the server keeps serving once the workers are back (while none
    // is alive, new requests get UNAVAILABLE by design).
    server.wait_ready(Duration::from_secs(30));
    let again = b.score(score("safe query", &bystanders[..3])).await;
    assert!(again.is_ok(), "{again:?}");
    let restarts = |role: &str| {
        support::metric(
            server.http_port,
            &format!("worker_restarts_total{{role=\"{role}\"}}"),
        )
    };
    assert!(restarts("tokenizer") >= 2.0 && restarts("model") >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpc_and_http_and_refuses_plain_text() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let server = Server::spawn(
        &[
            "--tokenizers",
            "0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &support::bin_dir(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    // HTTPS: a rustls client that trusts only our certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let https = |method: &'static str, path: &'static str, body: &'static str| {
        let (connector, port) = (connector.clone(), server.http_port);
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(format!(
                "{method} {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            ).as_bytes()).await?;
            let mut response = String::new();
            let _ = tls.read_to_string(&mut response).await;
            Ok::<_, std::io::Error>(response)
        }
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !https("GET", "/health", "")
        .await
        .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    {
        assert!(std::time::Instant::now() < until, "not ready over HTTPS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = https("POST", "/rerank", r#"{"query":"q","texts":["a","b"]}"#)
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains("\"index\""), "{reply}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = http(server.http_port, "GET", "/health", None);
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    // gRPC over TLS.
    let endpoint =
        tonic::transport::Channel::from_shared(format!("https://localhost:{}", server.grpc_port))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(
                        certified.cert.pem(),
                    ))
                    .domain_name("localhost"),
            )
            .unwrap();
    let channel = endpoint.connect().await.expect("TLS channel");
    let mut client = CrossEncoderClient::new(channel);
    let reply = client
        .rerank(support::two_document_rerank())
        .await
        .expect("rerank over TLS");
    assert_eq!(reply.into_inner().ranks.len(), 2);
    // A plain-text gRPC client is refused.
    let plain = CrossEncoderClient::connect(format!("http://127.0.0.1:{}", server.grpc_port)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c
            .rerank(RerankRequest {
                query: "q".into(),
                documents: vec!["a".into()],
                ..Default::default()
            })
            .await
            .is_err(),
    };
    assert!(refused, "plain-text gRPC answered on the TLS port");
}

/// `RerankRequest` with the query as raw bytes, to send what a correct
/// client cannot: a query that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRerankRequest {
    #[prost(bytes = "vec", tag = "1")]
    query: Vec<u8>,
    #[prost(string, repeated, tag = "2")]
    documents: Vec<String>,
}

/// Every kind of bad gRPC request, with the status and a word its message
/// must hold.
async fn send_bad_grpc(port: u16) {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CrossEncoderClient::new(channel.clone());
    let rerank = |query: &str, documents: Vec<String>, truncate: Option<bool>| RerankRequest {
        query: query.into(),
        documents,
        truncate,
        ..Default::default()
    };
    let mut unknown_direction = rerank("q", vec!["d".into()], None);
    unknown_direction.truncation_direction = 7;
    let mut top_zero = rerank("q", vec!["d".into()], None);
    top_zero.top_n = Some(0);
    let cases = [
        (
            rerank("  ", vec!["d".into()], None),
            Code::InvalidArgument,
            "query",
        ),
        (
            rerank("q", vec![], None),
            Code::InvalidArgument,
            "documents",
        ),
        (
            rerank("q", vec!["d".into(); 5], None),
            Code::InvalidArgument,
            "max_documents",
        ),
        (
            rerank("x".repeat(5001).as_str(), vec!["d".into()], None),
            Code::InvalidArgument,
            "query",
        ),
        (
            rerank("q", vec!["d".into(), "x".repeat(5001)], None),
            Code::InvalidArgument,
            "documents[1]",
        ),
        (
            rerank("q", vec!["short".into(), "word ".repeat(600)], Some(false)),
            Code::InvalidArgument,
            "document 1",
        ),
        (
            unknown_direction,
            Code::InvalidArgument,
            "truncation_direction",
        ),
        (top_zero, Code::InvalidArgument, "top_n"),
        (
            rerank("q", vec!["y".repeat(700_000), "y".repeat(700_000)], None),
            Code::OutOfRange,
            "too large",
        ),
    ];
    for (request, code, needle) in cases {
        let status = client.rerank(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{needle}: {status:?}");
        assert!(
            status.message().contains(needle),
            "{needle} not in {:?}",
            status.message()
        );
    }
    let mut score = score_request("q", &["d".to_string()]);
    score.pairs[0].query = String::new();
    let status = client.score(score).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Bytes that are not UTF-8 where the API has a string.
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let status = raw
        .unary(
            tonic::Request::new(RawRerankRequest {
                query: vec![b'q', 0xff, 0xfe],
                documents: vec!["d".into()],
            }),
            "/ce.v1.CrossEncoder/Rerank".parse().unwrap(),
            ce_proto::codec::ApiCodec::<RawRerankRequest, ce_proto::v1::RerankResponse>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    // Allowed: an empty document is scored; top_n beyond the count returns all.
    let mut all = rerank("q", vec!["".into(), "d".into()], None);
    all.top_n = Some(10);
    assert_eq!(
        client.rerank(all).await.unwrap().into_inner().ranks.len(),
        2
    );
    // Over-long input is truncated by default and scores fine.
    let long = client
        .rerank(rerank("q", vec!["word ".repeat(600)], None))
        .await;
    assert!(long.is_ok(), "{long:?}");
}

/// Every kind of bad HTTP request, through a raw socket.
fn send_bad_http(port: u16) {
    let raw = |request: &[u8]| -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request).unwrap();
        let mut response = Vec::new();
        let _ = s.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).to_string();
        let status = response
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, response)
    };
    let post = |content_type: &str, body: &[u8]| {
        let mut request = format!(
            "POST /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        raw(&request)
    };
    let json = |body: &str| post("application/json", body.as_bytes());
    let cases: [(&str, (u16, String), &str); 12] = [
        ("malformed JSON", json(r#"{"query": "#), "EOF"),
        ("missing field", json(r#"{"query": "q"}"#), "texts"),
        (
            "wrong type",
            json(r#"{"query": 1, "texts": ["a"]}"#),
            "query",
        ),
        (
            "empty query",
            json(r#"{"query": " ", "texts": ["a"]}"#),
            "query",
        ),
        (
            "no texts",
            json(r#"{"query": "q", "texts": []}"#),
            "documents",
        ),
        (
            "too many texts",
            json(r#"{"query": "q", "texts": ["a","b","c","d","e"]}"#),
            "max_documents",
        ),
        (
            "unknown direction",
            json(r#"{"query": "q", "texts": ["a"], "truncation_direction": "Up"}"#),
            "truncation_direction",
        ),
        (
            "over the token limit",
            json(&format!(
                r#"{{"query": "q", "texts": ["{}"], "truncate": false}}"#,
                "word ".repeat(600)
            )),
            "document 0",
        ),
        (
            "invalid UTF-8",
            post(
                "application/json",
                b"{\"query\": \"q\xff\", \"texts\": [\"a\"]}",
            ),
            "unicode",
        ),
        (
            "wrong content type",
            post("text/plain", br#"{"query": "q", "texts": ["a"]}"#),
            "application/json",
        ),
        (
            "body over the limit",
            json(&format!(
                r#"{{"query": "q", "texts": ["{}"]}}"#,
                "a".repeat(1_200_000)
            )),
            "max_request_bytes",
        ),
        (
            "unknown route",
            raw(b"GET /nope HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"),
            "POST /rerank",
        ),
    ];
    let want = [400, 422, 422, 422, 422, 422, 422, 422, 400, 415, 413, 404];
    for ((what, (status, response), needle), want) in cases.into_iter().zip(want) {
        assert_eq!(status, want, "{what}: {response}");
        assert!(
            response.contains(needle),
            "{what}: {needle:?} not in {response}"
        );
    }
    let (status, response) = raw(b"GET /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert_eq!(status, 405, "wrong method: {response}");
    assert!(response.contains("does not take GET"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_precisely_while_a_load_runs_unharmed() {
    let server = Server::start(&[
        "--tokenizers",
        "1",
        "--max-documents",
        "4",
        "--max-input-chars",
        "5000",
        "--max-request-bytes",
        "1048576",
    ]);
    let documents: Vec<String> = (0..4)
        .map(|d| format!("document {d} of the steady load, about rivers"))
        .collect();
    let want = engine_logits_for("load", &documents);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (mut client, stop, documents, want) = (
            server.client().await,
            stop.clone(),
            documents.clone(),
            want.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut answered = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let scores = client
                    .score(score_request("load", &documents))
                    .await
                    .expect("a load request failed")
                    .into_inner()
                    .scores;
                assert_close(&scores, &want, "load");
                answered += 1;
            }
            answered
        }));
    }
    send_bad_grpc(server.grpc_port).await;
    let port = server.http_port;
    tokio::task::spawn_blocking(move || send_bad_http(port))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = 0;
    for task in load {
        answered += task.await.expect("load task");
    }
    assert!(
        answered >= 2,
        "the load made no progress ({answered} answers)"
    );
    let errors = support::metric(
        server.http_port,
        "inference_requests_total{method=\"score\",status=\"ok\"}",
    );
    assert_eq!(errors, answered as f64, "score requests answered ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once_with_resource_exhausted() {
    let server = Server::start(&[
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--max-queue-pairs",
        "100",
    ]);
    // ~250 tokens each, so the admitted request holds the queue for
    // seconds, not the ~60 ms margin short documents left.
    let documents: Vec<String> = (0..100)
        .map(|d| {
            format!(
                "queued document {d} {}",
                "that keeps the only replica busy for a while ".repeat(25)
            )
        })
        .collect();
    let mut client = server.client().await;
    let first = {
        let mut client = client.clone();
        let request = score_request("fill", &documents);
        tokio::spawn(async move { client.score(request).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !first.is_finished(),
        "the filling request is already answered"
    );
    let asked = std::time::Instant::now();
    let status = client
        .score(score_request("more", &documents[..10]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_queue_pairs"), "{status:?}");
    assert!(asked.elapsed() < Duration::from_millis(500), "refused late");
    let port = server.http_port;
    let (code, body) = tokio::task::spawn_blocking(move || {
        http(
            port,
            "POST",
            "/rerank",
            Some(r#"{"query":"q","texts":["a"]}"#),
        )
        .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 429, "{body}");
    first
        .await
        .unwrap()
        .expect("the admitted request is answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_score_tokens_isolate_the_two_stages() {
    use ce_proto::v1::{ScoreTokensRequest, TokenizeRequest, TokenizedPair};

    let pairs = fixture_pairs();
    let want = engine_logits(&pairs);
    // Small chunks over two workers: the ids must still come back in order.
    let server = Server::start(&["--tokenizers", "2", "--tokenize-chunk", "4"]);
    let mut client = server.client().await;
    let request = |return_tokens| TokenizeRequest {
        pairs: proto_pairs(&pairs),
        return_tokens,
        ..Default::default()
    };
    let tokenized = client.tokenize(request(true)).await.unwrap().into_inner();
    let engine = model_worker::Engine::load(&model_worker::EngineConfig::new(
        support::model_dir().to_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(tokenized.pairs.len(), pairs.len());
    for (i, ((q, p), got)) in pairs.iter().zip(&tokenized.pairs).enumerate() {
        let (ids, types) = engine
            .tokenizer()
            .encode_pair(q, p, Default::default())
            .unwrap();
        assert_eq!(got.input_ids, ids, "pair {i}: ids");
        assert_eq!(got.type_ids, types, "pair {i}: segments");
        assert_eq!(tokenized.lengths[i] as usize, ids.len());
    }
    assert_eq!(
        tokenized.tokens as usize,
        tokenized
            .pairs
            .iter()
            .map(|p| p.input_ids.len())
            .sum::<usize>()
    );
    let counts_only = client.tokenize(request(false)).await.unwrap().into_inner();
    assert!(counts_only.pairs.is_empty());
    assert_eq!(counts_only.lengths, tokenized.lengths);

    let scored = client
        .score_tokens(ScoreTokensRequest {
            pairs: tokenized.pairs.clone(),
            raw_scores: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_close(&scored.scores, &want, "score_tokens");
    assert_eq!(scored.tokens, tokenized.tokens);

    // Ids a model worker would choke on are refused at the door, naming the pair.
    let good = tokenized.pairs[0].clone();
    let with = |f: &dyn Fn(&mut TokenizedPair)| {
        let mut bad = good.clone();
        f(&mut bad);
        ScoreTokensRequest {
            pairs: vec![good.clone(), bad],
            raw_scores: false,
        }
    };
    let cases: Vec<(ScoreTokensRequest, &str)> = vec![
        (
            with(&|p| {
                p.input_ids.clear();
                p.type_ids.clear();
            }),
            "pairs[1].input_ids: must not be empty",
        ),
        (
            with(&|p| {
                p.type_ids.pop();
            }),
            "pairs[1].type_ids",
        ),
        (
            with(&|p| p.input_ids[2] = 1_000_000),
            "pairs[1].input_ids[2]: token id 1000000 is outside the vocabulary",
        ),
        (
            with(&|p| p.type_ids[1] = 7),
            "pairs[1].type_ids[1]: segment 7",
        ),
        (
            with(&|p| {
                p.input_ids = vec![101; 600];
                p.type_ids = vec![0; 600];
            }),
            "exceed max_length",
        ),
        (ScoreTokensRequest::default(), "pairs: must not be empty"),
    ];
    for (bad, message) in cases {
        let status = client.score_tokens(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{message}");
        assert!(
            status.message().contains(message),
            "{:?} should contain {message:?}",
            status.message()
        );
    }
    // And the server still scores.
    let again = client
        .score_tokens(ScoreTokensRequest {
            pairs: vec![good],
            raw_scores: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_close(&again.scores, &want[..1], "after refusals");
}
