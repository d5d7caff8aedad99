//! Workers killed, hung, slow, unable to start, or crashed by poison input: no other request is lost.

use super::*;

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
    // The broken replica's model is served under its own name, unavailable
    // with the reason (UNAVAILABLE / 503), while the default model serves.
    let broken_model = "/nonexistent/broken-model";
    let mut to_broken = support::two_document_rerank();
    to_broken.model = broken_model.into();
    let e = client.rerank(to_broken).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("cannot be loaded"), "{}", e.message());
    let body = serde_json::json!({"model": broken_model, "query": "q", "documents": ["a"]});
    let (status, answer) = http(
        server.http_port,
        "POST",
        "/v2/rerank",
        Some(&body.to_string()),
    )
    .unwrap();
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer.contains("\"message\"") && answer.contains(broken_model),
        "{answer}"
    );
    assert_eq!(info["models"][0]["name"], broken_model, "{info}");
    assert!(info["models"][0]["error"].as_str().is_some(), "{info}");
    assert_eq!(info["models"][1]["default"], true, "{info}");
    // Its slot keeps retrying after a back-off; each failed retry is
    // counted, and none is mistaken for a replacement.
    let failed_starts = || {
        support::metric(
            server.http_port,
            "worker_start_failures_total{role=\"model\"}",
        )
    };
    let counted_by = std::time::Instant::now() + Duration::from_secs(20);
    while failed_starts() < 1.0 {
        assert!(
            std::time::Instant::now() < counted_by,
            "no failed start was counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        support::metric(server.http_port, "worker_restarts_total{role=\"model\"}"),
        0.0
    );
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
