//! Real clients against a real server: the official `cohere` Python SDK
//! (v1 and v2 rerank, `top_n`, `return_documents`, object documents, its
//! error classes, the API key) and schemathesis, which checks every
//! response of every route against `/openapi.json` (no 5xx, statuses,
//! content types, bodies and headers as documented). Both come from PyPI
//! into a venv by `scripts/client_venv.sh` (run here; once per machine).

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use support::{Server, http, workspace_root};

/// The venv's python, installed on first use (once for both tests; the
/// script also locks, for other processes).
fn client_python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new(workspace_root().join("scripts/client_venv.sh"))
                .output()
                .expect("run scripts/client_venv.sh");
            assert!(
                out.status.success(),
                "scripts/client_venv.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout).unwrap();
            PathBuf::from(stdout.lines().last().expect("the venv's python").trim())
        })
        .clone()
}

/// `/rerank`'s score of each document, by index.
fn tei_scores(port: u16, query: &str, documents: &[&str]) -> Vec<f32> {
    let body = serde_json::json!({"query": query, "texts": documents}).to_string();
    let (status, reply) = http_with_key(port, "/rerank", &body);
    assert_eq!(status, 200, "{reply}");
    let ranks: Vec<serde_json::Value> = serde_json::from_str(&reply).unwrap();
    let mut scores = vec![f32::NAN; documents.len()];
    for r in ranks {
        scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
    }
    scores
}

const KEY: &str = "sdk-test-key";

/// A POST with the test's API key.
fn http_with_key(port: u16, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[test]
fn the_official_cohere_sdk_reranks_through_v1_and_v2() {
    let python = client_python();
    let server = Server::start(&["--served-model-name", "minilm", "--api-key", KEY]);
    let base_url = format!("http://127.0.0.1:{}", server.http_port);
    let script = workspace_root().join("crates/supervisor/tests/clients/cohere_sdk.py");
    let out = Command::new(&python)
        .args([script.to_str().unwrap(), &base_url, KEY, "minilm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the cohere SDK failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: HashMap<String, HashMap<usize, f32>> = serde_json::from_slice(&out.stdout).unwrap();
    let want = tei_scores(
        server.http_port,
        "how do rust lifetimes work",
        &[
            "Lifetimes tell the compiler how long references live.",
            "Bananas are yellow.",
            "The borrow checker compares the lifetimes of references.",
        ],
    );
    for (call, scores) in &parsed {
        for (i, s) in scores {
            assert!(
                (s - want[*i]).abs() <= 1e-6,
                "{call}: document {i}: the SDK read {s}, /rerank says {}",
                want[*i]
            );
        }
    }
    assert_eq!(
        parsed.keys().count(),
        3,
        "v1, v1 with objects, v2: {parsed:?}"
    );
}

#[test]
fn every_response_conforms_to_the_openapi_document() {
    let python = client_python();
    // Small limits, so generated requests reach them quickly.
    let server = Server::start(&[
        "--served-model-name",
        "minilm",
        "--max-documents",
        "16",
        "--max-input-chars",
        "2000",
    ]);
    let (status, _) = http(server.http_port, "GET", "/openapi.json", None).unwrap();
    assert_eq!(status, 200);
    let config = workspace_root().join("crates/supervisor/tests/clients/schemathesis.toml");
    let url = format!("http://127.0.0.1:{}/openapi.json", server.http_port);
    let out = Command::new(&python)
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args([
            "run",
            &url,
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--seed",
            "17",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("Tested: 9"),
        "every operation tested:\n{report}"
    );
    // The server survived it and still serves.
    let (status, _) = http(server.http_port, "GET", "/health", None).unwrap();
    assert_eq!(status, 200);
}
