//! The rerank APIs other servers' clients speak — Cohere v1 and Jina
//! (`/v1/rerank`), Cohere v2 (`/v2/rerank`), vLLM (`/score`,
//! `/v1/models`) — their errors, the OpenAPI document, model routing
//! between two models served side by side, and long documents scored in
//! windows. (The official `cohere` SDK and schemathesis run in
//! `tests/clients.rs`.)

use std::path::Path;

use ce_common::frame::WindowPlan;
use ce_proto::v1::{ScoreTokensRequest, TokenizedPair};
use serde_json::{Value, json};
use tokenizer_worker::{PairTokenizer, Truncation};

use super::*;

/// POSTs `body` as JSON; the status and the parsed answer.
fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(port, "POST", path, Some(&body.to_string())).unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, value)
}

fn get(port: u16, path: &str) -> (u16, Value) {
    let (status, text) = http(port, "GET", path, None).unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

const QUERY: &str = "how do rust lifetimes work";

fn documents() -> Vec<String> {
    [
        "Lifetimes tell the compiler how long references live.",
        "Bananas are yellow.",
        "The borrow checker compares the lifetimes of references.",
    ]
    .map(String::from)
    .to_vec()
}

/// The scores TEI's `/rerank` gives, by document index.
fn tei_scores(port: u16, model: Option<&str>, query: &str, documents: &[String]) -> Vec<f32> {
    let mut body = json!({"query": query, "texts": documents});
    if let Some(m) = model {
        body["model"] = json!(m);
    }
    let (status, ranks) = post(port, "/rerank", &body);
    assert_eq!(status, 200, "{ranks}");
    let mut scores = vec![f32::NAN; documents.len()];
    for r in ranks.as_array().unwrap() {
        scores[r["index"].as_u64().unwrap() as usize] = r["score"].as_f64().unwrap() as f32;
    }
    scores
}

/// Results of a Cohere/Jina answer as `(index, relevance_score)`, in order.
fn results(answer: &Value) -> Vec<(usize, f32)> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {answer}"))
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap() as usize,
                r["relevance_score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_jina_and_vllm_clients_get_their_shapes() {
    let server = Server::start(&[
        "--served-model-name",
        "minilm",
        "--max-request-bytes",
        "65536",
        "--max-queue-tokens",
        "4000",
    ]);
    let port = server.http_port;
    let docs = documents();
    let want = tei_scores(port, None, QUERY, &docs);

    // Cohere v1: strings, top_n, no documents asked for.
    let (status, answer) = post(
        port,
        "/v1/rerank",
        &json!({"query": QUERY, "documents": docs, "top_n": 2, "return_documents": false}),
    );
    assert_eq!(status, 200, "{answer}");
    let ranked = results(&answer);
    assert_eq!(ranked.len(), 2);
    assert!(ranked[0].1 >= ranked[1].1);
    for (i, score) in &ranked {
        assert!(
            (score - want[*i]).abs() <= 1e-6,
            "{i}: {score} vs TEI {}",
            want[*i]
        );
        assert!(answer["results"][0].get("document").is_none());
    }
    assert_eq!(answer["meta"]["api_version"]["version"], "1");
    assert_eq!(answer["meta"]["billed_units"]["search_units"], 1);
    assert!(answer["id"].as_str().is_some_and(|id| id.len() >= 32));

    // Objects with rank_fields, echoed whole.
    let objects = json!([
        {"title": "Rust", "text": docs[0], "id": "a"},
        {"title": "Fruit", "text": docs[1], "id": "b"},
    ]);
    let (status, answer) = post(
        port,
        "/v1/rerank",
        &json!({"query": QUERY, "documents": objects, "rank_fields": ["text"]}),
    );
    assert_eq!(status, 200, "{answer}");
    for r in answer["results"].as_array().unwrap() {
        let i = r["index"].as_u64().unwrap() as usize;
        assert_eq!(r["document"]["id"], ["a", "b"][i], "{answer}");
        assert!((r["relevance_score"].as_f64().unwrap() as f32 - want[i]).abs() <= 1e-6);
    }

    // Jina: the model's name and usage come back, documents by default.
    let (status, answer) = post(
        port,
        "/v1/rerank",
        &json!({"model": "minilm", "query": QUERY, "documents": docs, "top_n": 1}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "minilm");
    assert!(answer["usage"]["total_tokens"].as_u64().unwrap() > 0);
    let best = (0..docs.len())
        .max_by(|&a, &b| want[a].total_cmp(&want[b]))
        .unwrap();
    assert_eq!(answer["results"][0]["document"]["text"], docs[best]);

    // Cohere v2: model required; unknown models are 404 naming the served.
    let v2 = json!({"model": "minilm", "query": QUERY, "documents": docs});
    let (status, answer) = post(port, "/v2/rerank", &v2);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["meta"]["api_version"]["version"], "2");
    assert_eq!(results(&answer).len(), 3);
    let (status, answer) = post(
        port,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": docs}),
    );
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("model"),
        "{answer}"
    );
    let (status, answer) = post(
        port,
        "/v2/rerank",
        &json!({"model": "rerank-v3.5", "query": QUERY, "documents": docs}),
    );
    assert_eq!(status, 404, "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("rerank-v3.5") && message.contains("minilm"),
        "{message}"
    );
    assert_eq!(answer["detail"], answer["message"], "Jina reads `detail`");

    // vLLM's score: one text_1 against every text_2, in order.
    let (status, answer) = post(port, "/score", &json!({"text_1": QUERY, "text_2": docs}));
    assert_eq!(status, 200, "{answer}");
    let data = answer["data"].as_array().unwrap();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["index"], i);
        assert!((d["score"].as_f64().unwrap() as f32 - want[i]).abs() <= 1e-6);
    }
    assert_eq!(answer["object"], "list");
    assert_eq!(answer["model"], "minilm");
    let (status, answer) = post(
        port,
        "/v1/score",
        &json!({"text_1": ["a", "b"], "text_2": ["c"]}),
    );
    assert_eq!(
        (status, answer["data"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    let (status, answer) = post(
        port,
        "/score",
        &json!({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["type"], "BadRequestError");

    // The model list.
    let (status, models) = get(port, "/v1/models");
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "minilm");
    assert_eq!(models["data"][0]["max_model_len"], 512);

    // Bad input gets each family's shape and a precise status.
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "/v1/rerank",
            json!({"query": "", "documents": ["a"]}),
            400,
            "query",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": []}),
            400,
            "documents",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
            400,
            "top_n",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "max_chunks_per_doc": 11}),
            400,
            "max_chunks_per_doc",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [{"title": "t"}]}),
            400,
            "no field \"text\"",
        ),
        (
            "/v1/rerank",
            json!({"query": "q", "documents": [7]}),
            422,
            "documents",
        ),
        (
            "/v2/rerank",
            json!({"model": "minilm", "query": "q", "documents": ["a"], "max_tokens_per_doc": 5000}),
            400,
            "max_tokens_per_doc",
        ),
        ("/score", json!({"text_1": "", "text_2": "a"}), 400, "query"),
        (
            "/score",
            json!({"model": "nope", "text_1": "q", "text_2": "a"}),
            404,
            "nope",
        ),
    ];
    for (path, body, want_status, needle) in cases {
        let (status, answer) = post(port, path, &body);
        assert_eq!(status, want_status, "{path} {body}: {answer}");
        let message = answer["message"]
            .as_str()
            .or(answer["error"]["message"].as_str())
            .unwrap_or_else(|| panic!("{path}: no message in {answer}"));
        assert!(message.contains(needle), "{path} {body}: {message}");
    }
    let (status, text) = http(port, "POST", "/v1/rerank", Some("{not json")).unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("\"message\""), "{text}");
    let huge = json!({"query": "q", "documents": ["x".repeat(70_000)]});
    let (status, answer) = post(port, "/v1/rerank", &huge);
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("max_request_bytes")
    );
    let (status, answer) = post(
        port,
        "/score",
        &json!({"text_1": "q", "text_2": "x".repeat(70_000)}),
    );
    assert_eq!(status, 413);
    assert_eq!(answer["error"]["code"], 413);

    // Too much model work for the queue: 429 in each shape.
    let heavy: Vec<String> = (0..16)
        .map(|i| format!("{i} {}", "word ".repeat(300)))
        .collect();
    let (status, answer) = post(
        port,
        "/v1/rerank",
        &json!({"query": "q", "documents": heavy}),
    );
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("max_queue_tokens")
    );
    let (status, answer) = post(port, "/score", &json!({"text_1": "q", "text_2": heavy}));
    assert_eq!(
        (status, answer["error"]["type"].as_str()),
        (429, Some("RateLimitError"))
    );

    // Per-model metrics and the document that describes it all.
    let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains(
            r#"inference_requests_total{method="http_v1_rerank",status="ok",model="minilm"}"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(r#"inference_pairs_total{model="minilm"}"#));
    let (status, doc) = get(port, "/openapi.json");
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v2/rerank"]["post"].is_object(), "{doc}");
}

/// A copy of the default model that is another model to the server: its
/// relevance head negated (so its scores are 1 − the default's) and its
/// tokenizer cased (so capitalised text tokenizes differently).
fn flipped_model() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let model = support::model_dir();
    for file in ["config.json", "vocab.txt"] {
        std::fs::copy(model.join(file), dir.path().join(file)).unwrap();
    }
    let tokenizer = std::fs::read_to_string(model.join("tokenizer.json")).unwrap();
    let mut tokenizer: Value = serde_json::from_str(&tokenizer).unwrap();
    assert_eq!(tokenizer["normalizer"]["type"], "BertNormalizer");
    tokenizer["normalizer"]["lowercase"] = json!(false);
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        negate_tensors(&weights, &["classifier.weight", "classifier.bias"]),
    )
    .unwrap();
    dir
}

/// `safetensors` bytes with the f32 tensors `names` negated.
fn negate_tensors(bytes: &[u8], names: &[&str]) -> Vec<u8> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut out = bytes.to_vec();
    for name in names {
        let tensor = &header[name];
        assert_eq!(tensor["dtype"], "F32", "{name}");
        let offsets = tensor["data_offsets"].as_array().unwrap();
        let (start, end) = (
            offsets[0].as_u64().unwrap() as usize,
            offsets[1].as_u64().unwrap() as usize,
        );
        let data = 8 + header_len;
        for v in out[data + start..data + end].chunks_exact_mut(4) {
            v[3] ^= 0x80;
        }
    }
    out
}

/// Ranks of a gRPC rerank by document index.
async fn grpc_scores(
    server: &Server,
    model: &str,
    query: &str,
    documents: &[String],
) -> Result<Vec<f32>, tonic::Status> {
    let mut client = server.client().await;
    let reply = client
        .rerank(RerankRequest {
            query: query.into(),
            documents: documents.to_vec(),
            model: model.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut scores = vec![f32::NAN; documents.len()];
    for r in reply.ranks {
        scores[r.index as usize] = r.score;
    }
    Ok(scores)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_served_side_by_side_score_as_each_alone() {
    let flipped = flipped_model();
    let query = "How do Rust Lifetimes work";
    let docs: Vec<String> = [
        "Lifetimes tell the Compiler how long References live.",
        "Bananas are Yellow.",
        "The Borrow Checker compares lifetimes.",
    ]
    .map(String::from)
    .to_vec();
    let launch = |model: &Path, args: &[&str]| {
        let server = Server::launch(support::Launch {
            model: model.display().to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            worker_dir: Some(support::bin_dir()),
            ..Default::default()
        })
        .unwrap();
        server.wait_ready(Duration::from_secs(60));
        server
    };
    let alone_default = launch(&support::model_dir(), &["--served-model-name", "minilm"]);
    let want_default = tei_scores(alone_default.http_port, None, query, &docs);
    drop(alone_default);
    let alone_flipped = launch(flipped.path(), &[]);
    let want_flipped = tei_scores(alone_flipped.http_port, None, query, &docs);
    drop(alone_flipped);
    for (d, f) in want_default.iter().zip(&want_flipped) {
        assert!(
            (d + f - 1.0).abs() > 1e-3,
            "the cased tokenizer changes the scores: {d} {f}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("two.toml");
    std::fs::write(
        &pool,
        format!(
            "served_model_name = \"minilm\"\n[[instances]]\n[[instances]]\nmodel = {:?}\nname = \"flipped\"\n",
            flipped.path().display().to_string()
        ),
    )
    .unwrap();
    for tokenizers in ["1", "0"] {
        let both = launch(
            &support::model_dir(),
            &[
                "--config",
                pool.to_str().unwrap(),
                "--tokenizers",
                tokenizers,
            ],
        );
        let port = both.http_port;
        // Both models at once, many times over: batches never mix them.
        let mut tasks = Vec::new();
        for i in 0..12 {
            let model = ["", "flipped", "minilm"][i % 3];
            let client = both.client().await;
            let docs = docs.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = client;
                let reply = client
                    .score(ce_proto::v1::ScoreRequest {
                        pairs: proto_pairs(
                            &docs
                                .iter()
                                .map(|d| (query.to_string(), d.clone()))
                                .collect::<Vec<_>>(),
                        ),
                        model: model.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                (model, reply.into_inner().scores)
            }));
        }
        for task in tasks {
            let (model, scores) = task.await.unwrap();
            let want = if model == "flipped" {
                &want_flipped
            } else {
                &want_default
            };
            assert_close(
                &scores,
                want,
                &format!("{tokenizers} tokenizers, model {model:?}"),
            );
        }
        assert_close(
            &grpc_scores(&both, "flipped", query, &docs).await.unwrap(),
            &want_flipped,
            "rerank",
        );
        assert_close(
            &tei_scores(port, Some("flipped"), query, &docs),
            &want_flipped,
            "TEI",
        );
        let (status, answer) = post(
            port,
            "/v1/rerank",
            &json!({"model": "flipped", "query": query, "documents": docs}),
        );
        assert_eq!((status, answer["model"].as_str()), (200, Some("flipped")));
        for (i, s) in results(&answer) {
            assert!((s - want_flipped[i]).abs() <= 1e-5);
        }
        let e = grpc_scores(&both, "nope", query, &docs).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("minilm, flipped"), "{}", e.message());

        let (_, models) = get(port, "/v1/models");
        let names: Vec<&str> = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["minilm", "flipped"]);
        let (_, info) = get(port, "/info");
        assert_eq!(info["replicas"][1]["model_name"], "flipped", "{info}");
        assert_eq!(info["models"][1]["replicas"], json!([1]));
        let mut client = both.client().await;
        let grpc_info = client
            .info(ce_proto::v1::InfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grpc_info.models.len(), 2);
        assert!(grpc_info.models[0].is_default);
        let (_, metrics) = http(port, "GET", "/metrics", None).unwrap();
        for model in ["minilm", "flipped"] {
            let pairs = format!("inference_pairs_total{{model=\"{model}\"}}");
            assert!(metrics.contains(&pairs), "{pairs}: {metrics}");
            assert!(
                metrics.contains(&format!("name=\"{model}\"")),
                "model_info names {model}"
            );
        }
    }
}

/// The default model's tokenizer at `max_length`.
fn tokenizer(max_length: usize) -> PairTokenizer {
    PairTokenizer::from_file(&support::model_dir().join("tokenizer.json"), max_length).unwrap()
}

/// Scores each pair in a call of its own: the reference for a window.
async fn one_by_one(server: &Server, pairs: &[(Vec<u32>, Vec<u32>)]) -> Vec<f32> {
    let mut client = server.client().await;
    let mut scores = Vec::new();
    for (ids, types) in pairs {
        let reply = client
            .score_tokens(ScoreTokensRequest {
                pairs: vec![TokenizedPair {
                    input_ids: ids.clone(),
                    type_ids: types.clone(),
                }],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        scores.push(reply.scores[0]);
    }
    scores
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_document_scores_as_its_best_window() {
    let server = Server::start(&[
        "--max-length",
        "64",
        "--chunk-overlap-tokens",
        "8",
        "--max-chunks-per-doc",
        "12",
    ]);
    let port = server.http_port;
    let query = "which river flows through the old town";
    let long: String = (0..60)
        .map(|i| match i {
            37 => "The Vltava river flows through the old town of Prague. ".to_string(),
            _ => format!("Paragraph {i} is about farming, weather and the price of grain. "),
        })
        .collect();
    let docs = vec![long.clone(), "A short note on rivers.".to_string()];
    let t = tokenizer(64);
    let q = t.encode_query_ids(query, Truncation::Right).unwrap();
    let plan = WindowPlan {
        max_windows: 12,
        overlap: 8,
        doc_tokens: 0,
    };
    let windows = t.encode_windows(&q, &long, plan).unwrap();
    assert!(windows.len() > 4, "a long document makes several windows");
    let pairs: Vec<_> = windows
        .iter()
        .map(|w| (w.ids.clone(), w.types.clone()))
        .collect();
    let each = one_by_one(&server, &pairs).await;
    let (best, best_score) = each
        .iter()
        .copied()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, s)| if s > b.1 { (i, s) } else { b });

    let (status, answer) = post(
        port,
        "/v1/rerank",
        &json!({"query": query, "documents": docs, "return_chunk_offsets": true}),
    );
    assert_eq!(status, 200, "{answer}");
    let long_result = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["index"] == 0)
        .unwrap();
    let chunked = long_result["relevance_score"].as_f64().unwrap() as f32;
    assert!(
        (chunked - best_score).abs() <= 1e-5,
        "chunked {chunked}, best window {best_score}"
    );
    let chunk = &long_result["chunk"];
    assert_eq!(chunk["chunks"], windows.len());
    assert_eq!(
        (
            chunk["start"].as_u64().unwrap() as u32,
            chunk["end"].as_u64().unwrap() as u32
        ),
        (windows[best].start, windows[best].end)
    );
    let text: String = long
        .chars()
        .skip(windows[best].start as usize)
        .take((windows[best].end - windows[best].start) as usize)
        .collect();
    assert!(
        text.contains("Vltava"),
        "the deciding window holds the answer: {text:?}"
    );

    // Fewer windows asked: the best of those.
    let (_, answer) = post(
        port,
        "/v1/rerank",
        &json!({"query": query, "documents": [long], "max_chunks_per_doc": 2}),
    );
    let two = results(&answer)[0].1;
    assert!((two - each[0].max(each[1])).abs() <= 1e-5);
    // Cohere v2's token cap: only the windows within the first 40 tokens.
    let capped = t
        .encode_windows(
            &q,
            &long,
            WindowPlan {
                doc_tokens: 40,
                ..plan
            },
        )
        .unwrap();
    let capped_pairs: Vec<_> = capped
        .iter()
        .map(|w| (w.ids.clone(), w.types.clone()))
        .collect();
    let capped_best = one_by_one(&server, &capped_pairs)
        .await
        .into_iter()
        .fold(f32::MIN, f32::max);
    let default_name = "minilm-l6-ce";
    let (_, answer) = post(
        port,
        "/v2/rerank",
        &json!({"model": default_name, "query": query, "documents": [long], "max_tokens_per_doc": 40}),
    );
    assert!(
        (results(&answer)[0].1 - capped_best).abs() <= 1e-5,
        "{answer}"
    );
    // TEI's /rerank still truncates unless asked: the first window's score
    // (the query fits in half the room, so truncation keeps that window).
    let truncated = tei_scores(port, None, query, std::slice::from_ref(&long))[0];
    assert!(
        (truncated - each[0]).abs() <= 1e-5,
        "truncated {truncated}, window 0 {}",
        each[0]
    );
    let (_, ranks) = post(
        port,
        "/rerank",
        &json!({"query": query, "texts": [long], "max_chunks_per_doc": 12}),
    );
    assert!((ranks[0]["score"].as_f64().unwrap() as f32 - best_score).abs() <= 1e-5);
    // gRPC asks the same way and gets the offsets.
    let mut client = server.client().await;
    let reply = client
        .rerank(RerankRequest {
            query: query.into(),
            documents: vec![long],
            chunk_long_documents: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!((reply.ranks[0].score - best_score).abs() <= 1e-5);
    assert_eq!(
        (reply.ranks[0].chunk_start, reply.ranks[0].chunks),
        (Some(windows[best].start), windows.len() as u32)
    );
}
