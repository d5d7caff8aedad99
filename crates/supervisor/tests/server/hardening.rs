//! The outside audit's classes, one test each (issue: hardening): jobs cut
//! by size, restarts that release everything, one validation on every
//! path, work admitted by tokens, connection timeouts, Ctrl-C, hostile
//! models, lying workers, settings arithmetic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;

/// `POST /rerank` of `texts` against `query`: (status, body).
fn rerank_http(port: u16, query: &str, texts: &[String]) -> (u16, String) {
    let body = serde_json::json!({ "query": query, "texts": texts }).to_string();
    http(port, "POST", "/rerank", Some(&body)).unwrap()
}

fn tokenizer_pids(server: &Server) -> Vec<u32> {
    server
        .workers()
        .into_iter()
        .filter(|(_, name)| name.contains("tokenizer"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Class 1: 32 documents of 50,000 two-byte characters (3.2 MB of text,
/// over the old 2 MiB frame) are an ordinary request: answered, and no
/// tokenizer is declared dead or replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_cut_by_size_and_a_large_request_kills_no_worker() {
    let server = Server::start(&["--tokenizers", "1"]);
    let before = tokenizer_pids(&server);
    let texts: Vec<String> = (0..32).map(|_| "жжж ".repeat(12_500)).collect();
    let (status, body) = rerank_http(server.http_port, "what is this", &texts);
    assert_eq!(status, 200, "{body}");
    let ranks: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(ranks.len(), 32);
    assert_eq!(tokenizer_pids(&server), before, "the same tokenizer serves");
    let restarts = support::metric(
        server.http_port,
        "worker_restarts_total{role=\"tokenizer\"}",
    );
    assert!(restarts <= 0.0, "{restarts} tokenizer restarts");
}

/// Class 2: every SIGKILLed tokenizer's rings, doorbells and exit fd are
/// released: fds and shared-memory mappings return to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_releases_everything_the_dead_worker_held() {
    let server = Server::start(&["--tokenizers", "1", "--replicas", "1"]);
    let mut client = server.client().await;
    client.rerank(support::two_document_rerank()).await.unwrap();
    let settle = || std::thread::sleep(Duration::from_millis(300));
    settle();
    let (fds, maps) = (server.fd_count(), server.ring_mappings());
    assert!(maps >= 2, "the rings are shared-memory mappings: {maps}");
    for _ in 0..3 {
        let pid = tokenizer_pids(&server)[0];
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while tokenizer_pids(&server).first().is_none_or(|&p| p == pid) {
            assert!(Instant::now() < until, "no replacement tokenizer");
            std::thread::sleep(Duration::from_millis(50));
        }
        server.wait_ready(Duration::from_secs(20));
        client.rerank(support::two_document_rerank()).await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(10);
    while (server.fd_count(), server.ring_mappings()) != (fds, maps) {
        assert!(
            Instant::now() < until,
            "after 3 restarts: {} fds (were {fds}), {} ring mappings (were {maps})",
            server.fd_count(),
            server.ring_mappings()
        );
        settle();
    }
}

/// Class 3: the stream checks `max_input_chars` like every other path, and
/// the gRPC port advertises its stream cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_checks_the_same_limits_and_the_stream_cap_is_advertised() {
    let server = Server::start(&[
        "--max-input-chars",
        "1000",
        "--grpc-max-concurrent-streams",
        "7",
    ]);
    let mut client = server.client().await;
    let pairs = vec![
        StreamPair {
            id: 1,
            query: "q".into(),
            passage: "x".repeat(1001),
            raw_scores: true,
            ..Default::default()
        },
        StreamPair {
            id: 2,
            query: "q".into(),
            passage: "fine".into(),
            raw_scores: true,
            ..Default::default()
        },
    ];
    let mut stream = client
        .rerank_stream(tokio_stream::iter(pairs))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await;
    let status = first.expect_err("an over-long passage is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("pair 1: passage")
            && status.message().contains("max_input_chars"),
        "{status:?}"
    );

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.grpc_port))
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    // The server's SETTINGS arrive with the handshake; give them a moment.
    let until = Instant::now() + Duration::from_secs(5);
    while h2.current_max_send_streams() != 7 {
        assert!(
            Instant::now() < until,
            "advertised {} streams",
            h2.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        h2 = h2.ready().await.unwrap();
    }
}

/// Class 4: a 52 KB request (a 50,000-character query, 1,024 one-letter
/// documents) tokenizes its query once and is admitted by its tokens, not
/// its pairs: its 1,024 × 512 tokens of model work are refused, quickly,
/// naming the limit; a small request with the same query is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_is_admitted_by_tokens_and_the_query_is_tokenized_once() {
    let server = Server::start(&["--tokenizers", "1"]);
    let query = "lorem ipsum ".repeat(50_000 / 12);
    let texts: Vec<String> = (0..1024)
        .map(|i| ((b'a' + (i % 26) as u8) as char).to_string())
        .collect();
    let started = Instant::now();
    let (status, body) = rerank_http(server.http_port, &query, &texts);
    let took = started.elapsed();
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_queue_tokens"), "{body}");
    assert!(took < Duration::from_secs(5), "refused after {took:?}");
    let (status, body) = rerank_http(server.http_port, &query, &texts[..4]);
    assert_eq!(status, 200, "{body}");
    // Every pair is cut to the model's 512 tokens, the query keeping its start.
    let mut client = server.client().await;
    let tokens = client
        .tokenize(ce_proto::v1::TokenizeRequest {
            pairs: proto_pairs(&[(query.clone(), "a".into())]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.lengths, [512]);
}

/// Class 5: a client trickling its headers, an idle keep-alive connection,
/// a body that never comes, a gRPC connection that never sends its
/// preface: each is cut at its configured timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_at_their_timeouts() {
    let server = Server::start(&[
        "--http-header-timeout-ms",
        "1000",
        "--http-idle-timeout-ms",
        "1500",
        "--http-body-timeout-ms",
        "1000",
        "--grpc-handshake-timeout-ms",
        "1000",
        "--grpc-keepalive-interval-ms",
        "500",
        "--grpc-keepalive-timeout-ms",
        "500",
    ]);
    let closed_within = |mut s: TcpStream, limit: Duration, trickle: bool| {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            assert!(started.elapsed() < limit, "still open after {limit:?}");
            if trickle {
                let _ = s.write_all(b"x-trickle: 1\r\n");
            }
            match s.read(&mut buf) {
                Ok(0) => return (started.elapsed(), String::new()),
                Ok(n) => {
                    return (
                        started.elapsed(),
                        String::from_utf8_lossy(&buf[..n]).into_owned(),
                    );
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return (started.elapsed(), String::new());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    };
    // Headers one line at a time.
    let mut s = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n").unwrap();
    let (took, _) = closed_within(s, Duration::from_secs(4), true);
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    // Idle after one request on a kept-alive connection.
    let mut s = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 256];
    let n = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let (took, _) = closed_within(s, Duration::from_secs(5), false);
    assert!(
        took >= Duration::from_millis(1000),
        "idle closed after {took:?}"
    );
    // A body that never arrives: 408.
    let mut s = TcpStream::connect(("127.0.0.1", server.http_port)).unwrap();
    s.write_all(b"POST /rerank HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"query\"").unwrap();
    let (_, answer) = closed_within(s, Duration::from_secs(4), false);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("http_body_timeout_ms"), "{answer}");
    // gRPC: connected, silent.
    let s = TcpStream::connect(("127.0.0.1", server.grpc_port)).unwrap();
    let (took, _) = closed_within(s, Duration::from_secs(4), false);
    assert!(took >= Duration::from_millis(800), "closed after {took:?}");
    // gRPC: an HTTP/2 peer that never answers the keepalive pings.
    let mut s = TcpStream::connect(("127.0.0.1", server.grpc_port)).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap(); // an empty SETTINGS frame
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink); // SETTINGS, PINGs, then GOAWAY and the close
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "a peer that never answers pings was dropped after {took:?}"
    );
    // The server still serves.
    let mut client = server.client().await;
    client.rerank(support::two_document_rerank()).await.unwrap();
}

/// Class 5: out of file descriptors, the accept loops back off instead of
/// spinning, and serve again once descriptors are free. Linux only: another
/// process's descriptor limit can be changed there alone (`prlimit`).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_backs_off_when_descriptors_run_out() {
    let server = Server::start(&[]);
    let pid = rustix::process::Pid::from_raw(server.pid() as i32).unwrap();
    let fds = server.fd_count() as u64;
    // The hard limit stays (lowering it could not be undone); only the soft one drops.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4)?.parse::<u64>().ok())
        .unwrap();
    let old = rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(fds + 2),
            maximum: Some(hard),
        },
    )
    .unwrap();
    // Connections the server cannot accept stay in the backlog, readable.
    let held: Vec<TcpStream> = (0..8)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", server.http_port)).ok())
        .collect();
    assert!(!held.is_empty());
    std::thread::sleep(Duration::from_millis(300));
    let ticks_before = server.cpu_ticks();
    std::thread::sleep(Duration::from_secs(2));
    let used = server.cpu_ticks() - ticks_before;
    // 100 ticks a second; a spinning accept loop burns a whole core (~200).
    assert!(used < 40, "{used} ticks in 2 s while out of fds");
    drop(held);
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, old).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, _) = http(server.http_port, "GET", "/health", None).unwrap();
    assert_eq!(status, 200);
}

/// Class 5: the server's own bound on a request's life, on both ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_server_timeout_gets_deadline_exceeded() {
    let slow = token_of("turtle");
    let server = Server::start_with_env(
        &["--request-timeout-ms", "400"],
        &[("CE_FAULT_DELAY_TOKEN", format!("{slow}:1500"))],
    );
    let texts = vec!["a turtle walks".to_string()];
    let (status, body) = rerank_http(server.http_port, "q", &texts);
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("request_timeout_ms"), "{body}");
    let mut client = server.client().await;
    let status = client.score(score_request("q", &texts)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// Class 6: Ctrl-C in the terminal (SIGINT to the whole foreground group)
/// drains like SIGTERM: the request in flight is answered, the workers
/// (in their own groups) are stopped by the supervisor, exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_the_request_in_flight() {
    let mut server = Server::start_as_job(&["--tokenizers", "1"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 2);
    let group =
        |pid: u32| rustix::process::getpgid(rustix::process::Pid::from_raw(pid as i32)).unwrap();
    for (pid, _) in &workers {
        assert_ne!(
            group(*pid),
            group(server.pid()),
            "a worker in the supervisor's group"
        );
    }
    let documents: Vec<String> = (0..256)
        .map(|i| format!("document {i} about the sea and ships"))
        .collect();
    let mut client = server.client().await;
    let call = tokio::spawn(async move { client.score(score_request("ships", &documents)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.interrupt_group();
    let scored = call
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(scored.into_inner().scores.len(), 256);
    let status = server.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status:?}");
    for (pid, _) in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} left"
        );
    }
}

/// Class 6: a SIGTERM while the workers load ends the start cleanly, and
/// no worker outlives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_loading_stops_cleanly() {
    let mut server = Server::spawn(&["--tokenizers", "1"], &support::bin_dir());
    let pid = server.pid();
    let status = server.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    assert!(ce_bench::server::children(pid).is_empty());
}

/// A copy of the default model whose `config.json` has `key` set to `value`.
fn model_with(key: &str, value: serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = support::model_dir();
    for file in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(model.join(file), dir.path().join(file)).unwrap();
    }
    let text = std::fs::read_to_string(model.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config[key] = value;
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

/// Class 7: a hostile `config.json` is refused before anything is
/// allocated: as the default model, the start fails naming the field; as
/// a replica's, `/info` says why and the slot gives up after its attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_model_is_reported_not_retried_forever() {
    let hostile = model_with("hidden_size", 12_582_912.into());
    let launch = support::Launch {
        model: hostile.path().display().to_string(),
        worker_dir: Some(support::bin_dir()),
        ..Default::default()
    };
    match Server::launch(launch) {
        Err(ce_bench::server::ServerError::Exited(status)) => assert!(!status.success()),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a hostile default model started"),
    }
    let mismatched = model_with("intermediate_size", 2048.into());
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool.toml");
    std::fs::write(
        &pool,
        format!(
            "[[instances]]\n\n[[instances]]\nmodel = {:?}\n",
            mismatched.path().display().to_string()
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--config",
        pool.to_str().unwrap(),
        "--max-start-attempts",
        "2",
    ]);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, info) = http(server.http_port, "GET", "/info", None).unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        let error = info["replicas"][1]["error"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if error.contains("replica 1 cannot load") {
            assert!(
                error.contains("intermediate.dense.weight") && error.contains("2 failed starts"),
                "{error}"
            );
            assert_eq!(info["replicas"][0]["serving"], true, "{info}");
            break;
        }
        assert!(Instant::now() < until, "{info}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Class 9: a tokenizer that answers with fewer pairs than asked is killed
/// and replaced, the job retried once, then refused with a clear error;
/// the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_worker_is_replaced_and_its_job_refused() {
    let server = Server::start_with_env(
        &["--tokenizers", "1"],
        &[("CE_FAULT_SHORT_REPLY_TEXT", "platypus".into())],
    );
    let mut client = server.client().await;
    let documents = vec!["a platypus swims".to_string(), "a duck".to_string()];
    let status = client
        .score(score_request("animals", &documents))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("answered nonsense"), "{status:?}");
    server.wait_ready(Duration::from_secs(30));
    let fine = vec!["a duck".to_string()];
    let scores = client.score(score_request("animals", &fine)).await.unwrap();
    assert_close(
        &scores.into_inner().scores,
        &engine_logits_for("animals", &fine),
        "after",
    );
    assert!(
        support::metric(
            server.http_port,
            "worker_restarts_total{role=\"tokenizer\"}"
        ) >= 2.0
    );
}

/// Class 10: the batch budget is checked against the model's effective
/// length (512 here), not the configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_budget_is_checked_against_the_effective_length() {
    let server = Server::start(&["--max-length", "4096", "--max-batch-tokens", "600"]);
    let mut client = server.client().await;
    client.rerank(support::two_document_rerank()).await.unwrap();
    let launch = support::Launch {
        model: support::model_dir().display().to_string(),
        args: vec!["--max-batch-tokens".into(), "500".into()],
        worker_dir: Some(support::bin_dir()),
        ..Default::default()
    };
    assert!(matches!(
        Server::launch(launch),
        Err(ce_bench::server::ServerError::Exited(_))
    ));
}
