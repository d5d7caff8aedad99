//! The HTTP API in text-embeddings-inference's shapes.

use super::*;

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
    // The replica says what computes it.
    assert!(info.contains("\"kernel\":\"cpu encoder, f32\""), "{info}");
    let (status, metrics) = http(server.http_port, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("inference_requests_total{"), "{metrics}");
}
