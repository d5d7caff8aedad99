//! An abuse battery across every gRPC method and HTTP route of one real
//! server: malformed, oversized, slow, unauthenticated and out-of-limit
//! requests, each asserting its exact status and the class of its message.
//! After every case a normal request must return the same scores as
//! before, with the same worker processes (none killed or replaced) and no
//! file descriptor more.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use ce_proto::v1::{
    InfoRequest, Pair, RerankRequest, ScoreRequest, ScoreTokensRequest, StreamPair,
    TokenizeRequest, TokenizedPair,
};
use futures_util::future::BoxFuture;
use support::Server;
use tonic::Code;
use tonic::transport::Channel;

const KEY: &str = "battery-key";
const MAX_DOCUMENTS: usize = 64;
const MAX_CHARS: usize = 2000;
const MAX_BYTES: usize = 262_144;

/// What a case can use.
struct Ctx {
    http: u16,
    grpc: u16,
    client: CrossEncoderClient<Channel>,
}

/// A message with the API key.
fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {KEY}").parse().unwrap());
    request
}

/// Raw HTTP/1.1 on a fresh connection: the status line's code and the
/// whole answer (0 and "" when the server closed without answering).
fn raw_http(port: u16, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, answer)
}

/// A JSON request with `headers` (e.g. the key), closing after the answer.
fn request(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

const JSON: &str = "content-type: application/json\r\n";

fn key_header() -> String {
    format!("{JSON}authorization: Bearer {KEY}\r\n")
}

/// A one-document `POST /rerank` sent with this `authorization` header.
fn rerank_as(port: u16, authorization: &str) -> (u16, String) {
    let headers = format!("{JSON}authorization: {authorization}\r\n");
    let body = br#"{"query":"q","texts":["a"]}"#;
    raw_http(port, &request("POST", "/rerank", &headers, body))
}

/// `POST /rerank` with the key.
fn rerank_json(port: u16, body: &str) -> (u16, String) {
    raw_http(
        port,
        &request("POST", "/rerank", &key_header(), body.as_bytes()),
    )
}

fn expect_http((status, answer): (u16, String), want: u16, class: &str) {
    assert_eq!(status, want, "{answer}");
    assert!(
        answer.to_lowercase().contains(&class.to_lowercase()),
        "answer lacks {class:?}: {answer}"
    );
}

fn expect_grpc<T: std::fmt::Debug>(result: Result<T, tonic::Status>, want: Code, class: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), want, "{status:?}");
    assert!(
        status
            .message()
            .to_lowercase()
            .contains(&class.to_lowercase()),
        "message lacks {class:?}: {status:?}"
    );
}

fn docs(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("document {i}")).collect()
}

fn long(n: usize) -> String {
    "w".repeat(n)
}

/// `n` one-token words in 2n characters (within `MAX_CHARS`, over 512 tokens).
fn words(n: usize) -> String {
    "x ".repeat(n)
}

fn rerank(query: &str, documents: Vec<String>) -> RerankRequest {
    RerankRequest {
        query: query.into(),
        documents,
        ..Default::default()
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Vec<Pair> {
    pairs
        .iter()
        .map(|(q, p)| Pair {
            query: q.to_string(),
            passage: p.to_string(),
        })
        .collect()
}

fn tokens(ids: Vec<u32>, types: Vec<u32>) -> ScoreTokensRequest {
    ScoreTokensRequest {
        pairs: vec![TokenizedPair {
            input_ids: ids,
            type_ids: types,
        }],
        ..Default::default()
    }
}

/// The first answer of a `RerankStream` of one pair (with the key).
async fn first_streamed(
    client: &mut CrossEncoderClient<Channel>,
    id: u64,
    query: String,
    passage: String,
) -> Result<Option<ce_proto::v1::StreamScore>, tonic::Status> {
    let pair = StreamPair {
        id,
        query,
        passage,
        raw_scores: false,
        ..Default::default()
    };
    let mut s = client
        .rerank_stream(authed(tokio_stream::iter(vec![pair])))
        .await?
        .into_inner();
    s.message().await
}

/// A gRPC call sent by hand over HTTP/2: `(grpc-status, grpc-message)`.
async fn raw_grpc(port: u16, path: &str, frame: Vec<u8>, with_key: bool) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if with_key {
        builder = builder.header("authorization", format!("Bearer {KEY}"));
    }
    let (response, mut body) = h2.send_request(builder.body(()).unwrap(), false).unwrap();
    // The server may answer (and close the stream) before the body is sent.
    let _ = body.send_data(Bytes::from(frame), true);
    let response = response.await.unwrap();
    let header = |h: &http::HeaderMap, k: &str| {
        h.get(k)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.to_string())
    };
    if let Some(status) = header(response.headers(), "grpc-status") {
        let message = header(response.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk;
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_default(),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

/// A gRPC message frame: flag, big-endian length, payload.
fn grpc_frame(compressed: bool, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![u8::from(compressed)];
    f.extend_from_slice(&declared_len.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

type Case = (&'static str, fn(&mut Ctx) -> BoxFuture<'_, ()>);

macro_rules! case {
    ($name:literal, |$ctx:ident| $body:expr) => {
        ($name, |$ctx: &mut Ctx| {
            Box::pin(async move { $body }) as BoxFuture<'_, ()>
        })
    };
}

fn http_cases() -> Vec<Case> {
    vec![
        case!("http: JSON syntax error", |c| expect_http(
            rerank_json(c.http, "{"),
            400,
            "json"
        )),
        case!("http: empty body", |c| expect_http(
            rerank_json(c.http, ""),
            400,
            "json"
        )),
        case!("http: missing texts", |c| expect_http(
            rerank_json(c.http, r#"{"query":"q"}"#),
            422,
            "texts"
        )),
        case!("http: texts not a list", |c| expect_http(
            rerank_json(c.http, r#"{"query":"q","texts":"a"}"#),
            422,
            "texts"
        )),
        case!("http: query a number", |c| expect_http(
            rerank_json(c.http, r#"{"query":7,"texts":["a"]}"#),
            422,
            "query"
        )),
        case!("http: raw_scores a string", |c| expect_http(
            rerank_json(c.http, r#"{"query":"q","texts":["a"],"raw_scores":"yes"}"#),
            422,
            "raw_scores"
        )),
        case!("http: no documents", |c| expect_http(
            rerank_json(c.http, r#"{"query":"q","texts":[]}"#),
            422,
            "must not be empty"
        )),
        case!("http: too many documents", |c| {
            let body =
                serde_json::json!({"query": "q", "texts": docs(MAX_DOCUMENTS + 1)}).to_string();
            expect_http(rerank_json(c.http, &body), 422, "max_documents")
        }),
        case!("http: document over max_input_chars", |c| {
            let body =
                serde_json::json!({"query": "q", "texts": [long(MAX_CHARS + 1)]}).to_string();
            expect_http(rerank_json(c.http, &body), 422, "max_input_chars")
        }),
        case!("http: query over max_input_chars", |c| {
            let body =
                serde_json::json!({"query": long(MAX_CHARS + 1), "texts": ["a"]}).to_string();
            expect_http(rerank_json(c.http, &body), 422, "max_input_chars")
        }),
        case!("http: empty query", |c| expect_http(
            rerank_json(c.http, r#"{"query":"","texts":["a"]}"#),
            422,
            "must not be empty"
        )),
        case!("http: whitespace query", |c| expect_http(
            rerank_json(c.http, r#"{"query":" \t\n ","texts":["a"]}"#),
            422,
            "must not be empty"
        )),
        case!("http: unknown truncation direction", |c| expect_http(
            rerank_json(
                c.http,
                r#"{"query":"q","texts":["a"],"truncation_direction":"Up"}"#
            ),
            422,
            "truncation_direction"
        )),
        case!("http: too long without truncation", |c| {
            let body = serde_json::json!({"query": "q", "texts": [words(900)], "truncate": false})
                .to_string();
            expect_http(rerank_json(c.http, &body), 422, "exceeds the model's limit")
        }),
        case!("http: query too long without truncation", |c| {
            let body = serde_json::json!({"query": words(900), "texts": ["a"], "truncate": false})
                .to_string();
            expect_http(rerank_json(c.http, &body), 422, "query of")
        }),
        case!("http: body over max_request_bytes", |c| {
            let body = vec![b' '; MAX_BYTES + 1];
            expect_http(
                raw_http(c.http, &request("POST", "/rerank", &key_header(), &body)),
                413,
                "max_request_bytes",
            )
        }),
        case!("http: declared body never sent", |c| {
            let head = format!(
                "POST /rerank HTTP/1.1\r\nhost: x\r\n{}content-length: 500\r\n\r\n{{",
                key_header()
            );
            expect_http(
                raw_http(c.http, head.as_bytes()),
                408,
                "http_body_timeout_ms",
            )
        }),
        case!("http: body cut short, connection closed", |c| {
            let mut s = TcpStream::connect(("127.0.0.1", c.http)).unwrap();
            let head = format!(
                "POST /rerank HTTP/1.1\r\nhost: x\r\n{}content-length: 500\r\n\r\n{{\"q",
                key_header()
            );
            s.write_all(head.as_bytes()).unwrap();
            drop(s);
        }),
        case!("http: invalid UTF-8", |c| {
            let body = b"{\"query\":\"\xff\xfe\",\"texts\":[\"a\"]}";
            expect_http(
                raw_http(c.http, &request("POST", "/rerank", &key_header(), body)),
                400,
                "unicode",
            )
        }),
        case!("http: deep nesting in an ignored field", |c| {
            let body = format!(
                "{{\"query\":\"q\",\"texts\":[\"a\"],\"extra\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            );
            // Skipped without recursing (serde_json), so no stack to overflow.
            expect_http(rerank_json(c.http, &body), 200, "\"index\"")
        }),
        case!("http: wrong content type", |c| {
            let headers = format!("content-type: text/plain\r\nauthorization: Bearer {KEY}\r\n");
            let body = br#"{"query":"q","texts":["a"]}"#;
            expect_http(
                raw_http(c.http, &request("POST", "/rerank", &headers, body)),
                415,
                "content-type",
            )
        }),
        case!("http: no API key", |c| expect_http(
            raw_http(
                c.http,
                &request("POST", "/rerank", JSON, br#"{"query":"q","texts":["a"]}"#)
            ),
            401,
            "api key"
        )),
        case!(
            "http: no API key, a body that never comes: refused first",
            |c| {
                let started = Instant::now();
                let head = format!(
                    "POST /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{JSON}content-length: 5000\r\n\r\n{{"
                );
                expect_http(raw_http(c.http, head.as_bytes()), 401, "api key");
                assert!(
                    started.elapsed() < Duration::from_millis(600),
                    "{:?}",
                    started.elapsed()
                );
            }
        ),
        case!("http: wrong API key", |c| expect_http(
            rerank_as(c.http, &format!("Bearer {KEY}x")),
            401,
            "api key"
        )),
        case!("http: key of the wrong length", |c| expect_http(
            rerank_as(c.http, "Bearer k"),
            401,
            "api key"
        )),
        case!("http: Basic instead of Bearer", |c| expect_http(
            rerank_as(c.http, &format!("Basic {KEY}")),
            401,
            "api key"
        )),
        case!("http: lower-case bearer is accepted", |c| expect_http(
            rerank_as(c.http, &format!("bearer {KEY}")),
            200,
            "\"index\""
        )),
        case!("http: /info without key", |c| expect_http(
            raw_http(c.http, &request("GET", "/info", "", b"")),
            401,
            "api key"
        )),
        case!("http: /info with key", |c| expect_http(
            raw_http(c.http, &request("GET", "/info", &key_header(), b"")),
            200,
            "max_documents"
        )),
        case!("http: /health needs no key", |c| expect_http(
            raw_http(c.http, &request("GET", "/health", "", b"")),
            200,
            "ok"
        )),
        case!("http: /metrics needs no key", |c| expect_http(
            raw_http(c.http, &request("GET", "/metrics", "", b"")),
            200,
            "inference_requests_total"
        )),
        case!("http: GET /rerank", |c| expect_http(
            raw_http(c.http, &request("GET", "/rerank", &key_header(), b"")),
            405,
            "does not take"
        )),
        case!("http: PUT /info", |c| expect_http(
            raw_http(c.http, &request("PUT", "/info", &key_header(), b"")),
            405,
            "does not take"
        )),
        case!("http: unknown route", |c| expect_http(
            raw_http(
                c.http,
                &request("POST", "/v9/nothing", &key_header(), b"{}")
            ),
            404,
            "no route"
        )),
        case!("http: path traversal", |c| expect_http(
            raw_http(
                c.http,
                &request("GET", "/../../etc/passwd", &key_header(), b"")
            ),
            404,
            "no route"
        )),
        case!("http: garbage request line", |c| expect_http(
            raw_http(c.http, b"GARBAGE\r\n\r\n"),
            400,
            "bad request"
        )),
        case!("http: header too large", |c| {
            let headers = format!("x-big: {}\r\n", "b".repeat(512 * 1024));
            let (status, _) = raw_http(c.http, &request("GET", "/health", &headers, b""));
            assert!(status == 431 || status == 0, "status {status}");
        }),
        case!("http: too many headers", |c| {
            let headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
            expect_http(
                raw_http(c.http, &request("GET", "/health", &headers, b"")),
                431,
                "",
            )
        }),
        case!("http: chunked body", |c| {
            let body = r#"{"query":"q","texts":["a"]}"#;
            let r = format!(
                "POST /rerank HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{}transfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                key_header(),
                body.len()
            );
            expect_http(raw_http(c.http, r.as_bytes()), 200, "\"score\"")
        }),
        case!("http: unknown fields are ignored", |c| expect_http(
            rerank_json(
                c.http,
                r#"{"query":"q","texts":["a"],"served_by":"x","extra":[1,2]}"#
            ),
            200,
            "\"index\""
        )),
        case!(
            "http: NUL and control characters are text",
            |c| expect_http(
                rerank_json(
                    c.http,
                    "{\"query\":\"q\\u0000\",\"texts\":[\"\\u0001\\u0007a\"]}"
                ),
                200,
                "\"index\""
            )
        ),
        case!("http: headers trickled", |c| {
            let mut s = TcpStream::connect(("127.0.0.1", c.http)).unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            loop {
                assert!(started.elapsed() < Duration::from_secs(5), "still open");
                let _ = s.write_all(b"x-slow: 1\r\n");
                match s.read(&mut buf) {
                    Ok(_) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(_) => {}
                }
            }
        }),
        case!("http: connect and close", |c| drop(
            TcpStream::connect(("127.0.0.1", c.http)).unwrap()
        )),
    ]
}

/// A JSON `POST` of `body` to `path` with the key.
fn post_json(port: u16, path: &str, body: &str) -> (u16, String) {
    raw_http(port, &request("POST", path, &key_header(), body.as_bytes()))
}

/// The other clients' routes: each family's limits and errors (Cohere's
/// `message`, vLLM's `error.message`), the same care as `/rerank`.
fn compat_cases() -> Vec<Case> {
    use serde_json::json;
    vec![
        case!("v1/rerank: no key", |c| expect_http(
            raw_http(
                c.http,
                &request(
                    "POST",
                    "/v1/rerank",
                    JSON,
                    br#"{"query":"q","documents":["a"]}"#
                )
            ),
            401,
            "\"message\""
        )),
        case!("v1/rerank: JSON syntax error", |c| expect_http(
            post_json(c.http, "/v1/rerank", "{"),
            400,
            "\"detail\""
        )),
        case!("v1/rerank: documents of numbers", |c| expect_http(
            post_json(c.http, "/v1/rerank", r#"{"query":"q","documents":[1,2]}"#),
            422,
            "documents"
        )),
        case!("v1/rerank: too many documents", |c| {
            let body = json!({"query": "q", "documents": docs(MAX_DOCUMENTS + 1)}).to_string();
            expect_http(post_json(c.http, "/v1/rerank", &body), 400, "max_documents")
        }),
        case!("v1/rerank: document over max_input_chars", |c| {
            let body =
                json!({"query": "q", "documents": [{"text": long(MAX_CHARS + 1)}]}).to_string();
            expect_http(
                post_json(c.http, "/v1/rerank", &body),
                400,
                "max_input_chars",
            )
        }),
        case!("v1/rerank: body over max_request_bytes", |c| {
            let body = vec![b' '; MAX_BYTES + 1];
            expect_http(
                raw_http(c.http, &request("POST", "/v1/rerank", &key_header(), &body)),
                413,
                "\"message\":\"request body over max_request_bytes",
            )
        }),
        case!("v1/rerank: zero windows", |c| expect_http(
            post_json(
                c.http,
                "/v1/rerank",
                r#"{"query":"q","documents":["a"],"max_chunks_per_doc":0}"#
            ),
            400,
            "max_chunks_per_doc: must be at least 1"
        )),
        case!("v1/rerank: more windows than the server allows", |c| {
            expect_http(
                post_json(
                    c.http,
                    "/v1/rerank",
                    r#"{"query":"q","documents":["a"],"max_chunks_per_doc":100000}"#,
                ),
                400,
                "exceeds this server's max_chunks_per_doc",
            )
        }),
        case!("v1/rerank: negative top_n", |c| expect_http(
            post_json(
                c.http,
                "/v1/rerank",
                r#"{"query":"q","documents":["a"],"top_n":-1}"#
            ),
            422,
            "top_n"
        )),
        case!("v1/rerank: fractional top_n", |c| expect_http(
            post_json(
                c.http,
                "/v1/rerank",
                r#"{"query":"q","documents":["a"],"top_n":1.5}"#
            ),
            422,
            "not a count"
        )),
        case!("v1/rerank: empty rank_fields", |c| expect_http(
            post_json(
                c.http,
                "/v1/rerank",
                r#"{"query":"q","documents":[{"text":"a"}],"rank_fields":[]}"#
            ),
            400,
            "rank_fields"
        )),
        case!("v1/rerank: a rank field that is not text", |c| expect_http(
            post_json(
                c.http,
                "/v1/rerank",
                r#"{"query":"q","documents":[{"text":{"deep":1}}]}"#
            ),
            400,
            "must be a string"
        )),
        case!(
            "v1/rerank: a long document within the limits is scored in windows",
            |c| {
                let body =
                    json!({"query": "q", "documents": [words(900)], "return_chunk_offsets": true})
                        .to_string();
                expect_http(post_json(c.http, "/v1/rerank", &body), 200, "\"chunks\":")
            }
        ),
        case!("v1/rerank: wrong content type", |c| expect_http(
            raw_http(
                c.http,
                &request(
                    "POST",
                    "/v1/rerank",
                    &format!("content-type: text/plain\r\nauthorization: Bearer {KEY}\r\n"),
                    b"{}"
                )
            ),
            415,
            "message"
        )),
        case!("v1/rerank: GET", |c| expect_http(
            raw_http(c.http, &request("GET", "/v1/rerank", &key_header(), b"")),
            405,
            "does not take GET"
        )),
        case!("v2/rerank: without model", |c| expect_http(
            post_json(c.http, "/v2/rerank", r#"{"query":"q","documents":["a"]}"#),
            422,
            "model"
        )),
        case!("v2/rerank: unknown model", |c| expect_http(
            post_json(
                c.http,
                "/v2/rerank",
                r#"{"model":"rerank-v3.5","query":"q","documents":["a"]}"#
            ),
            404,
            "not served here"
        )),
        case!("v2/rerank: a served name with spaces around it", |c| {
            expect_http(
                post_json(
                    c.http,
                    "/v2/rerank",
                    r#"{"model":" minilm-l6-ce ","query":"q","documents":["a"]}"#,
                ),
                404,
                "not served here",
            )
        }),
        case!(
            "v2/rerank: a top_n past every integer type keeps every document",
            |c| expect_http(
                post_json(
                    c.http,
                    "/v2/rerank",
                    r#"{"model":"minilm-l6-ce","query":"q","documents":["a","b"],"top_n":26907955555549688901983820316672}"#
                ),
                200,
                "\"index\":1"
            )
        ),
        case!("v1/score: an empty model is the default", |c| expect_http(
            post_json(
                c.http,
                "/v1/score",
                r#"{"model":"","text_1":"q","text_2":"a"}"#
            ),
            200,
            "\"score\""
        )),
        case!("v2/rerank: max_tokens_per_doc over the server's", |c| {
            let body = json!({"model": "minilm-l6-ce", "query": "q", "documents": ["a"], "max_tokens_per_doc": 1u64 << 40}).to_string();
            expect_http(
                post_json(c.http, "/v2/rerank", &body),
                400,
                "max_tokens_per_doc",
            )
        }),
        case!("v2/rerank: documents as objects", |c| expect_http(
            post_json(
                c.http,
                "/v2/rerank",
                r#"{"model":"m","query":"q","documents":[{"text":"a"}]}"#
            ),
            422,
            "documents"
        )),
        case!("score: lists of different lengths", |c| expect_http(
            post_json(
                c.http,
                "/score",
                r#"{"text_1":["a","b"],"text_2":["c","d","e"]}"#
            ),
            400,
            "must be as long"
        )),
        case!("score: no texts", |c| expect_http(
            post_json(c.http, "/score", r#"{"text_1":"q","text_2":[]}"#),
            400,
            "must not be empty"
        )),
        case!("score: too many pairs", |c| {
            let body = json!({"text_1": "q", "text_2": docs(MAX_DOCUMENTS + 1)}).to_string();
            expect_http(post_json(c.http, "/score", &body), 400, "max_documents")
        }),
        case!("score: text_1 a number", |c| expect_http(
            post_json(c.http, "/score", r#"{"text_1":5,"text_2":"a"}"#),
            422,
            "\"type\":\"BadRequestError\""
        )),
        case!("score: unknown model", |c| expect_http(
            post_json(
                c.http,
                "/v1/score",
                r#"{"model":"x","text_1":"q","text_2":"a"}"#
            ),
            404,
            "NotFoundError"
        )),
        case!("models: no key", |c| expect_http(
            raw_http(c.http, &request("GET", "/v1/models", "", b"")),
            401,
            "AuthenticationError"
        )),
        case!("openapi.json needs no key", |c| expect_http(
            raw_http(c.http, &request("GET", "/openapi.json", "", b"")),
            200,
            "\"/v2/rerank\""
        )),
    ]
}

fn grpc_cases() -> Vec<Case> {
    vec![
        case!("grpc: rerank without key", |c| expect_grpc(
            c.client.rerank(rerank("q", docs(1))).await,
            Code::Unauthenticated,
            "api key"
        )),
        case!("grpc: rerank with a wrong key", |c| {
            let mut r = tonic::Request::new(rerank("q", docs(1)));
            r.metadata_mut()
                .insert("authorization", "Bearer nope".parse().unwrap());
            expect_grpc(c.client.rerank(r).await, Code::Unauthenticated, "api key")
        }),
        case!("grpc: lower-case bearer is accepted", |c| {
            let mut r = tonic::Request::new(rerank("q", docs(2)));
            r.metadata_mut()
                .insert("authorization", format!("bearer {KEY}").parse().unwrap());
            assert_eq!(
                c.client.rerank(r).await.unwrap().into_inner().ranks.len(),
                2
            );
        }),
        case!("grpc: rerank without documents", |c| expect_grpc(
            c.client.rerank(authed(rerank("q", vec![]))).await,
            Code::InvalidArgument,
            "must not be empty"
        )),
        case!("grpc: rerank with an empty query", |c| expect_grpc(
            c.client.rerank(authed(rerank("", docs(1)))).await,
            Code::InvalidArgument,
            "must not be empty"
        )),
        case!("grpc: rerank over max_documents", |c| expect_grpc(
            c.client
                .rerank(authed(rerank("q", docs(MAX_DOCUMENTS + 1))))
                .await,
            Code::InvalidArgument,
            "max_documents"
        )),
        case!("grpc: rerank document over max_input_chars", |c| {
            expect_grpc(
                c.client
                    .rerank(authed(rerank("q", vec![long(MAX_CHARS + 1)])))
                    .await,
                Code::InvalidArgument,
                "max_input_chars",
            )
        }),
        case!("grpc: rerank top_n 0", |c| {
            let mut r = rerank("q", docs(2));
            r.top_n = Some(0);
            expect_grpc(
                c.client.rerank(authed(r)).await,
                Code::InvalidArgument,
                "top_n",
            )
        }),
        case!("grpc: rerank too long without truncation", |c| {
            let mut r = rerank("q", vec![words(900)]);
            r.truncate = Some(false);
            expect_grpc(
                c.client.rerank(authed(r)).await,
                Code::InvalidArgument,
                "exceeds the model's limit",
            )
        }),
        case!("grpc: rerank unknown truncation direction", |c| {
            let mut r = rerank("q", docs(1));
            r.truncation_direction = 77;
            expect_grpc(
                c.client.rerank(authed(r)).await,
                Code::InvalidArgument,
                "truncation_direction",
            )
        }),
        case!("grpc: score without pairs", |c| expect_grpc(
            c.client.score(authed(ScoreRequest::default())).await,
            Code::InvalidArgument,
            "must not be empty"
        )),
        case!("grpc: score with an empty query", |c| {
            let r = ScoreRequest {
                pairs: pairs(&[("q", "a"), (" ", "b")]),
                ..Default::default()
            };
            expect_grpc(
                c.client.score(authed(r)).await,
                Code::InvalidArgument,
                "pairs[1].query",
            )
        }),
        case!("grpc: score passage over max_input_chars", |c| {
            let p = long(MAX_CHARS + 1);
            let r = ScoreRequest {
                pairs: pairs(&[("q", &p)]),
                ..Default::default()
            };
            expect_grpc(
                c.client.score(authed(r)).await,
                Code::InvalidArgument,
                "max_input_chars",
            )
        }),
        case!("grpc: score over max_documents", |c| {
            let many: Vec<(&str, &str)> = vec![("q", "a"); MAX_DOCUMENTS + 1];
            let r = ScoreRequest {
                pairs: pairs(&many),
                ..Default::default()
            };
            expect_grpc(
                c.client.score(authed(r)).await,
                Code::InvalidArgument,
                "max_documents",
            )
        }),
        case!("grpc: tokenize without pairs", |c| expect_grpc(
            c.client.tokenize(authed(TokenizeRequest::default())).await,
            Code::InvalidArgument,
            "must not be empty"
        )),
        case!("grpc: tokenize query over max_input_chars", |c| {
            let q = long(MAX_CHARS + 1);
            let r = TokenizeRequest {
                pairs: pairs(&[(&q, "a")]),
                ..Default::default()
            };
            expect_grpc(
                c.client.tokenize(authed(r)).await,
                Code::InvalidArgument,
                "max_input_chars",
            )
        }),
        case!("grpc: tokenize without truncation, query too long", |c| {
            let q = words(900);
            let r = TokenizeRequest {
                pairs: pairs(&[(&q, "a")]),
                truncate: Some(false),
                ..Default::default()
            };
            expect_grpc(
                c.client.tokenize(authed(r)).await,
                Code::InvalidArgument,
                "query of",
            )
        }),
        case!("grpc: score_tokens without pairs", |c| expect_grpc(
            c.client
                .score_tokens(authed(ScoreTokensRequest::default()))
                .await,
            Code::InvalidArgument,
            "must not be empty"
        )),
        case!("grpc: score_tokens with empty ids", |c| expect_grpc(
            c.client.score_tokens(authed(tokens(vec![], vec![]))).await,
            Code::InvalidArgument,
            "input_ids"
        )),
        case!("grpc: score_tokens id outside the vocabulary", |c| {
            expect_grpc(
                c.client
                    .score_tokens(authed(tokens(vec![101, 4_000_000_000, 102], vec![0, 0, 0])))
                    .await,
                Code::InvalidArgument,
                "vocabulary",
            )
        }),
        case!("grpc: score_tokens unknown segment", |c| expect_grpc(
            c.client
                .score_tokens(authed(tokens(vec![101, 102], vec![0, 2])))
                .await,
            Code::InvalidArgument,
            "segment"
        )),
        case!("grpc: score_tokens ids and segments differ", |c| {
            expect_grpc(
                c.client
                    .score_tokens(authed(tokens(vec![101, 7, 102], vec![0, 0])))
                    .await,
                Code::InvalidArgument,
                "parallel",
            )
        }),
        case!("grpc: score_tokens over max_length", |c| expect_grpc(
            c.client
                .score_tokens(authed(tokens(vec![7; 513], vec![0; 513])))
                .await,
            Code::InvalidArgument,
            "max_length"
        )),
        case!(
            "grpc: stream passage over max_input_chars",
            |c| expect_grpc(
                first_streamed(&mut c.client, 9, "q".into(), long(MAX_CHARS + 1)).await,
                Code::InvalidArgument,
                "max_input_chars"
            )
        ),
        case!("grpc: stream query over max_input_chars", |c| expect_grpc(
            first_streamed(&mut c.client, 9, long(MAX_CHARS + 1), "a".into()).await,
            Code::InvalidArgument,
            "max_input_chars"
        )),
        case!("grpc: stream with an empty query", |c| expect_grpc(
            first_streamed(&mut c.client, 3, "".into(), "a".into()).await,
            Code::InvalidArgument,
            "pair 3"
        )),
        case!("grpc: stream without key", |c| {
            let pair = StreamPair {
                id: 1,
                query: "q".into(),
                passage: "a".into(),
                raw_scores: false,
                ..Default::default()
            };
            expect_grpc(
                c.client.rerank_stream(tokio_stream::iter(vec![pair])).await,
                Code::Unauthenticated,
                "api key",
            )
        }),
        case!("grpc: message over max_request_bytes", |c| {
            expect_grpc(
                c.client
                    .rerank(authed(rerank("q", vec![long(MAX_BYTES)])))
                    .await,
                Code::OutOfRange,
                "too large",
            )
        }),
        case!("grpc: a deadline too short", |c| {
            let mut r = authed(rerank("q", docs(32)));
            r.set_timeout(Duration::from_millis(2));
            let status = c.client.rerank(r).await.unwrap_err();
            assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{status:?}"
            );
        }),
        case!("grpc: a deadline of a day is capped, not refused", |c| {
            let mut r = authed(rerank("q", docs(2)));
            r.set_timeout(Duration::from_secs(86_400));
            assert_eq!(
                c.client.rerank(r).await.unwrap().into_inner().ranks.len(),
                2
            );
        }),
        case!("grpc: info without key", |c| expect_grpc(
            c.client.info(InfoRequest::default()).await,
            Code::Unauthenticated,
            "api key"
        )),
        case!("grpc: info with key", |c| assert_eq!(
            c.client
                .info(authed(InfoRequest::default()))
                .await
                .unwrap()
                .into_inner()
                .max_documents as usize,
            MAX_DOCUMENTS
        )),
        case!("grpc: health needs no key", |c| {
            let channel = Channel::from_shared(format!("http://127.0.0.1:{}", c.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let reply = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            assert_eq!(
                reply.into_inner().status,
                tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
        }),
        case!("grpc: unknown method", |c| {
            let (status, _) = raw_grpc(
                c.grpc,
                "/ce.v1.CrossEncoder/Nope",
                grpc_frame(false, 0, b""),
                true,
            )
            .await;
            assert_eq!(status, (Code::Unimplemented as i32).to_string());
        }),
        case!("grpc: unknown service", |c| {
            let (status, _) = raw_grpc(
                c.grpc,
                "/evil.Service/Call",
                grpc_frame(false, 0, b""),
                true,
            )
            .await;
            assert_eq!(status, (Code::Unimplemented as i32).to_string());
        }),
        case!("grpc: protobuf garbage", |c| {
            let junk = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02];
            let (status, message) = raw_grpc(
                c.grpc,
                "/ce.v1.CrossEncoder/Rerank",
                grpc_frame(false, junk.len() as u32, &junk),
                true,
            )
            .await;
            assert_eq!(
                status,
                (Code::InvalidArgument as i32).to_string(),
                "{message}"
            );
            assert!(message.contains("does%20not%20decode"), "{message}");
        }),
        case!("grpc: compressed flag without an encoding", |c| {
            let (status, message) = raw_grpc(
                c.grpc,
                "/ce.v1.CrossEncoder/Rerank",
                grpc_frame(true, 3, b"abc"),
                true,
            )
            .await;
            assert!(
                status == (Code::Internal as i32).to_string()
                    || status == (Code::Unimplemented as i32).to_string(),
                "{status} {message}"
            );
        }),
        case!("grpc: frame shorter than declared", |c| {
            let (status, message) = raw_grpc(
                c.grpc,
                "/ce.v1.CrossEncoder/Rerank",
                grpc_frame(false, 1000, b"\x0a\x01q"),
                true,
            )
            .await;
            assert_eq!(status, (Code::Internal as i32).to_string(), "{message}");
        }),
        case!("grpc: declared length past the limit", |c| {
            let (status, message) = raw_grpc(
                c.grpc,
                "/ce.v1.CrossEncoder/Rerank",
                grpc_frame(false, u32::MAX, b""),
                true,
            )
            .await;
            assert_eq!(status, (Code::OutOfRange as i32).to_string(), "{message}");
        }),
        case!("grpc: garbage instead of a preface", |c| {
            let mut s = TcpStream::connect(("127.0.0.1", c.grpc)).unwrap();
            s.write_all(&[0x42; 64]).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
        }),
        case!("grpc: half a preface, then close", |c| {
            let mut s = TcpStream::connect(("127.0.0.1", c.grpc)).unwrap();
            s.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        }),
        case!("grpc: HTTP/1 on the gRPC port", |c| {
            let (status, _) = raw_http(c.grpc, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
            assert_ne!(status, 200);
        }),
    ]
}

/// The normal request every case is followed by: its scores.
async fn normal(client: &mut CrossEncoderClient<Channel>) -> Vec<f32> {
    let mut r = rerank(
        "what is shared memory",
        support::fixture()
            .pairs
            .iter()
            .take(8)
            .map(|p| p.passage.clone())
            .collect(),
    );
    r.raw_scores = true;
    let mut ranks = client
        .rerank(authed(r))
        .await
        .expect("the normal request")
        .into_inner()
        .ranks;
    ranks.sort_by_key(|r| r.index);
    ranks.into_iter().map(|r| r.score).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_abuse_case_is_refused_precisely_and_costs_nothing() {
    let max_documents = MAX_DOCUMENTS.to_string();
    let max_chars = MAX_CHARS.to_string();
    let max_bytes = MAX_BYTES.to_string();
    let server = Server::start(&[
        "--api-key",
        KEY,
        "--tokenizers",
        "1",
        "--max-documents",
        &max_documents,
        "--max-input-chars",
        &max_chars,
        "--max-request-bytes",
        &max_bytes,
        "--http-body-timeout-ms",
        "700",
        "--http-header-timeout-ms",
        "700",
    ]);
    let client = server.client().await;
    let mut ctx = Ctx {
        http: server.http_port,
        grpc: server.grpc_port,
        client,
    };
    let want = normal(&mut ctx.client).await;
    let workers = server.workers();
    std::thread::sleep(Duration::from_millis(300));
    let fds = server.fd_count();
    let cases: Vec<Case> = http_cases()
        .into_iter()
        .chain(compat_cases())
        .chain(grpc_cases())
        .collect();
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let mut failed = Vec::new();
    for (name, run) in cases {
        eprintln!("case: {name}");
        // Every case runs; the failures are listed together at the end.
        let outcome =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(&mut ctx)))
                .await;
        if outcome.is_err() {
            failed.push(name.to_string());
        }
        let got = normal(&mut ctx.client).await;
        let same =
            got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| (g - w).abs() <= 1e-5);
        if !same {
            failed.push(format!("after {name}: scores {got:?}, were {want:?}"));
        }
        if server.workers() != workers {
            failed.push(format!(
                "after {name}: the workers changed: {:?}",
                server.workers()
            ));
        }
        let until = Instant::now() + Duration::from_secs(5);
        while server.fd_count() > fds && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if server.fd_count() > fds {
            failed.push(format!(
                "after {name}: {} fds, were {fds}",
                server.fd_count()
            ));
        }
    }
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}
