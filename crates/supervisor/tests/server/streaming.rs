//! RerankStream: each pair answered as it is scored; a cancelled stream stops costing work.

use super::*;

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
            ..Default::default()
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
                ..Default::default()
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
