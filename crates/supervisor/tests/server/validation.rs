//! Bad input refused precisely on both protocols, a full queue, a passed deadline.

use super::*;

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
        "inference_requests_total{method=\"score\",status=\"ok\",",
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
    // The server answers DEADLINE_EXCEEDED when the deadline passes; the
    // client's own timer, started before the request left, can expire in
    // the same instant and win the race (a CI run under load saw it). Either
    // way the server must have ended the request as deadline_exceeded.
    let client_timer = status.code() == Code::Cancelled && status.message() == "Timeout expired";
    assert!(
        status.code() == Code::DeadlineExceeded || client_timer,
        "{status:?}"
    );
    // When the client's timer won, the server saw the client go away
    // before its own deadline fired: it records that as cancelled.
    let deadline_answers = || {
        let (_, metrics) = http(server.http_port, "GET", "/metrics", None).unwrap();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("inference_requests_total{")
                    && (l.contains("status=\"deadline_exceeded\"")
                        || (client_timer && l.contains("status=\"cancelled\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let waited = std::time::Instant::now();
    while deadline_answers() < 1.0 && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        deadline_answers(),
        1.0,
        "the server ended it as deadline_exceeded (or cancelled, when the client's timer won)"
    );
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

/// A setting no replica can serve stops the server at start, naming the
/// key, before any worker starts (it used to pass, and the worker then
/// restarted forever).
#[test]
fn unusable_settings_stop_the_start_with_the_key_named() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ce-supervisor"))
            .arg("--model")
            .arg(support::model_dir())
            .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .env("CE_LOG", "error")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ce-supervisor");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (status, stderr) = run(&["--set", "dtype=q3"]);
    assert!(!status.success());
    assert!(
        stderr.contains("dtype") && stderr.contains("q3"),
        "{stderr}"
    );
    let (status, stderr) = run(&["--dtype", "q3"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--dtype") && stderr.contains("q3"),
        "{stderr}"
    );
    let (status, stderr) = run(&["--dtype", "i8", "--attention", "padded"]);
    assert!(!status.success());
    assert!(
        stderr.contains("replica 0") && stderr.contains("i8") && stderr.contains("q8_0"),
        "{stderr}"
    );
}

/// A client that goes away before its answer (no deadline sent, its own
/// future dropped) is counted as a cancelled request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_counted_as_cancelled() {
    let server = Server::start(&["--replicas", "1", "--tokenizers", "1"]);
    let mut client = server.client().await;
    let documents: Vec<String> = (0..1024)
        .map(|d| format!("document {d} {}", "long enough to take a while ".repeat(10)))
        .collect();
    let call = client.rerank(RerankRequest {
        query: "gone".into(),
        documents,
        ..Default::default()
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(200), call)
            .await
            .is_err(),
        "1024 documents take longer than 200 ms"
    );
    let cancelled = || {
        let (_, metrics) = http(server.http_port, "GET", "/metrics", None).unwrap();
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("inference_requests_total{") && l.contains("status=\"cancelled\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let waited = std::time::Instant::now();
    while cancelled() < 1.0 && waited.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled(), 1.0, "the abandoned request is recorded");
}
