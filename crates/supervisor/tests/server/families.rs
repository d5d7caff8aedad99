//! Every model family served side by side, one replica each, through the
//! whole system (tokenizer worker, rings, model workers, HTTP): each
//! model's scores are transformers' logits within 1e-4
//! (tests/fixtures/families, written by scripts/family_fixtures.py).

use serde_json::{Value, json};

use super::*;

const FAMILIES: &[&str] = &[
    "xlm-roberta",
    "roberta",
    "electra",
    "distilbert",
    "modernbert",
    "modernbert-mean",
];

fn family_dir(name: &str) -> std::path::PathBuf {
    support::workspace_root()
        .join("tests/fixtures/families")
        .join(name)
}

/// Every fixture pair's raw score from model `name` over TEI's `/rerank`
/// (with the pair's instruction, if it has one) is transformers' logit of
/// label `relevant` within 1e-4.
fn check_raw_scores(port: u16, name: &str, pairs: &[Value], relevant: usize) {
    let mut worst = 0f64;
    for pair in pairs {
        let mut body = json!({
            "model": name,
            "query": pair["query"],
            "texts": [pair["passage"]],
            "raw_scores": true,
        });
        if let Some(instruction) = pair.get("instruction") {
            body["instruction"] = instruction.clone();
        }
        let (status, text) = http(port, "POST", "/rerank", Some(&body.to_string())).unwrap();
        assert_eq!(status, 200, "{name}: {text}");
        let served = serde_json::from_str::<Value>(&text).unwrap()[0]["score"]
            .as_f64()
            .unwrap();
        let want = pair["logits"][relevant].as_f64().unwrap();
        worst = worst.max((served - want).abs());
        assert!(
            (served - want).abs() <= 1e-4,
            "{name}: pair {} ({}): served {served}, transformers {want}",
            pair["id"],
            pair["kind"]
        );
    }
    println!("{name}: served raw scores within {worst:.1e} of transformers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_is_served_with_transformers_scores() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("families.toml");
    let mut toml = String::from("served_model_name = \"xlm-roberta\"\n[[instances]]\n");
    for name in &FAMILIES[1..] {
        toml += &format!(
            "[[instances]]\nmodel = {:?}\nname = {name:?}\n",
            family_dir(name).display().to_string()
        );
    }
    std::fs::write(&pool, toml).unwrap();
    let server = Server::launch(support::Launch {
        model: family_dir(FAMILIES[0]).display().to_string(),
        // The longest fixture's max length; each model is capped by its own.
        args: ["--config", pool.to_str().unwrap(), "--max-length", "96"]
            .map(String::from)
            .to_vec(),
        worker_dir: Some(support::bin_dir()),
        ..Default::default()
    })
    .unwrap();
    server.wait_ready(Duration::from_secs(90));
    let port = server.http_port;

    for name in FAMILIES {
        let text = std::fs::read_to_string(family_dir(name).join("expected.json")).unwrap();
        let fixture: Value = serde_json::from_str(&text).unwrap();
        let pairs = fixture["pairs"].as_array().unwrap();
        let labels = pairs[0]["logits"].as_array().unwrap().len();
        // xlm-roberta's id2label names label 1 "relevant"; the others have one.
        let relevant = usize::from(labels == 2);
        check_raw_scores(port, name, pairs, relevant);
    }

    // Without raw scores a two-label model gives the relevant label's
    // probability; the info names each model's family.
    let pair = &serde_json::from_str::<Value>(
        &std::fs::read_to_string(family_dir("xlm-roberta").join("expected.json")).unwrap(),
    )
    .unwrap()["pairs"][0];
    let body = json!({"model": "xlm-roberta", "query": pair["query"], "texts": [pair["passage"]]});
    let (_, text) = http(port, "POST", "/rerank", Some(&body.to_string())).unwrap();
    let score = serde_json::from_str::<Value>(&text).unwrap()[0]["score"]
        .as_f64()
        .unwrap();
    let (a, b) = (
        pair["logits"][0].as_f64().unwrap(),
        pair["logits"][1].as_f64().unwrap(),
    );
    let want = 1.0 / (1.0 + (a - b).exp());
    assert!(
        (score - want).abs() < 1e-5,
        "softmax of label 1: {score} vs {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relevant_label_setting_picks_the_scored_logit() {
    let model = family_dir("xlm-roberta");
    let text = std::fs::read_to_string(model.join("expected.json")).unwrap();
    let pair = serde_json::from_str::<Value>(&text).unwrap()["pairs"][0].clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("label0.toml");
    std::fs::write(&config, "[[instances]]\nrelevant_label = 0\n").unwrap();
    let server = Server::launch(support::Launch {
        model: model.display().to_string(),
        args: ["--config", config.to_str().unwrap()]
            .map(String::from)
            .to_vec(),
        worker_dir: Some(support::bin_dir()),
        ..Default::default()
    })
    .unwrap();
    server.wait_ready(Duration::from_secs(60));
    let body = json!({"query": pair["query"], "texts": [pair["passage"]], "raw_scores": true});
    let (status, text) =
        http(server.http_port, "POST", "/rerank", Some(&body.to_string())).unwrap();
    assert_eq!(status, 200, "{text}");
    let score = serde_json::from_str::<Value>(&text).unwrap()[0]["score"]
        .as_f64()
        .unwrap();
    let want = pair["logits"][0].as_f64().unwrap();
    assert!(
        (score - want).abs() <= 1e-4,
        "label 0 chosen: {score} vs {want}"
    );
    drop(server);

    // A label the model does not have stops the start, naming it.
    let config = dir.path().join("label5.toml");
    std::fs::write(&config, "[[instances]]\nrelevant_label = 5\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ce-supervisor"))
        .arg("--model")
        .arg(&model)
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .arg("--config")
        .arg(&config)
        .env("CE_LOG", "error")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ce-supervisor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("relevant_label 5 is not one of its 2 labels"),
        "{stderr}"
    );
}

/// The LLM rerankers (Qwen3 as a yes/no causal LM and as a classifier)
/// through the whole system: raw scores are transformers' logits within
/// 1e-4 over TEI's `/rerank`, with each pair's own instruction where it has
/// one; an instruction reaches the model on every API (gRPC Rerank, Score
/// and a stream, Cohere's `/v1/rerank` and `/v2/rerank`, vLLM's `/score`);
/// the yes/no model's score is p(yes); an encoder refuses an instruction;
/// `/info` shows each LLM's prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_rerankers_are_served_with_transformers_scores_and_instructions() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("llm.toml");
    let toml = format!(
        "served_model_name = \"qwen3-reranker\"\n[[instances]]\n[[instances]]\nmodel = {:?}\nname = \"qwen3-seq-cls\"\n[[instances]]\nmodel = {:?}\nname = \"roberta\"\n",
        family_dir("qwen3-seq-cls").display().to_string(),
        family_dir("roberta").display().to_string(),
    );
    std::fs::write(&pool, toml).unwrap();
    let server = Server::launch(support::Launch {
        model: family_dir("qwen3-reranker").display().to_string(),
        args: ["--config", pool.to_str().unwrap(), "--max-length", "224"]
            .map(String::from)
            .to_vec(),
        worker_dir: Some(support::bin_dir()),
        ..Default::default()
    })
    .unwrap();
    server.wait_ready(Duration::from_secs(90));
    let port = server.http_port;
    let fixture_of = |name: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(family_dir(name).join("expected.json")).unwrap(),
        )
        .unwrap()
    };
    for (name, relevant) in [("qwen3-reranker", 1), ("qwen3-seq-cls", 0)] {
        check_raw_scores(
            port,
            name,
            fixture_of(name)["pairs"].as_array().unwrap(),
            relevant,
        );
    }

    // The pairs with their own instruction, and the same pairs without it.
    let fixture = fixture_of("qwen3-reranker");
    let pairs = fixture["pairs"].as_array().unwrap();
    let own = pairs
        .iter()
        .find(|p| p.get("instruction").is_some())
        .unwrap();
    let default = pairs
        .iter()
        .find(|p| {
            p.get("instruction").is_none()
                && p["query"] == own["query"]
                && p["passage"] == own["passage"]
        })
        .unwrap();
    let instruction = own["instruction"].as_str().unwrap().to_string();
    let p_yes = |p: &Value| {
        let (no, yes) = (
            p["logits"][0].as_f64().unwrap(),
            p["logits"][1].as_f64().unwrap(),
        );
        1.0 / (1.0 + (no - yes).exp())
    };
    let (with, without) = (p_yes(own), p_yes(default));
    assert!(
        (with - without).abs() > 1e-4,
        "the instruction changes the score"
    );
    let close = |got: f64, want: f64, what: &str| {
        assert!((got - want).abs() <= 1e-4, "{what}: {got} vs {want}");
    };
    let (query, passage) = (
        own["query"].as_str().unwrap().to_string(),
        own["passage"].as_str().unwrap().to_string(),
    );
    for (path, body) in [
        (
            "/v1/rerank",
            json!({"query": query, "documents": [passage], "instruction": instruction}),
        ),
        (
            "/v2/rerank",
            json!({"model": "qwen3-reranker", "query": query, "documents": [passage], "instruction": instruction}),
        ),
    ] {
        let (status, text) = http(port, "POST", path, Some(&body.to_string())).unwrap();
        assert_eq!(status, 200, "{path}: {text}");
        let score = serde_json::from_str::<Value>(&text).unwrap()["results"][0]["relevance_score"]
            .as_f64()
            .unwrap();
        close(score, with, path);
    }
    let body = json!({"text_1": query, "text_2": [passage], "instruction": instruction});
    let (status, text) = http(port, "POST", "/score", Some(&body.to_string())).unwrap();
    assert_eq!(status, 200, "/score: {text}");
    let score = serde_json::from_str::<Value>(&text).unwrap()["data"][0]["score"]
        .as_f64()
        .unwrap();
    close(score, with, "/score");
    let body = json!({"query": query, "texts": [passage]});
    let (_, text) = http(port, "POST", "/rerank", Some(&body.to_string())).unwrap();
    let score = serde_json::from_str::<Value>(&text).unwrap()[0]["score"]
        .as_f64()
        .unwrap();
    close(score, without, "p(yes) with the default instruction");

    let mut client = server.client().await;
    let ranked = client
        .rerank(RerankRequest {
            query: query.clone(),
            documents: vec![passage.clone()],
            instruction: Some(instruction.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    close(ranked.ranks[0].score as f64, with, "gRPC Rerank");
    let scored = client
        .score(ScoreRequest {
            pairs: proto_pairs(&[(query.clone(), passage.clone())]),
            instruction: Some(instruction.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    close(scored.scores[0] as f64, with, "gRPC Score");
    let pair = StreamPair {
        id: 7,
        query: query.clone(),
        passage: passage.clone(),
        instruction: Some(instruction.clone()),
        ..Default::default()
    };
    let mut stream = client
        .rerank_stream(futures_util::stream::iter(vec![pair]))
        .await
        .unwrap()
        .into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    close(answer.score as f64, with, "gRPC ScoreStream");

    // An encoder takes no instruction, on HTTP and gRPC alike.
    let body = json!({"model": "roberta", "query": "q", "texts": ["d"], "instruction": "x"});
    let (status, text) = http(port, "POST", "/rerank", Some(&body.to_string())).unwrap();
    assert_eq!(
        status, 422,
        "TEI answers a validation error with 422: {text}"
    );
    assert!(text.contains("takes no instruction"), "{text}");
    let refused = client
        .rerank(RerankRequest {
            model: "roberta".into(),
            query: "q".into(),
            documents: vec!["d".into()],
            instruction: Some("x".into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    let info = client
        .info(ce_proto::v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    for m in &info.models {
        let prompted = m.name.starts_with("qwen3");
        assert_eq!(m.prompt_template.is_some(), prompted, "{}", m.name);
        if prompted {
            assert!(m.prompt_template.as_ref().unwrap().contains("{document}"));
            assert_eq!(
                m.default_instruction.as_deref(),
                Some(ce_model_spec::prompt::QWEN3_RERANKER_INSTRUCTION)
            );
        }
    }
}

/// A prompt setting reaches the tokenizer (a template of one's own scores
/// otherwise than Qwen3-Reranker's), and one given to an encoder-only
/// server stops the start, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_settings_reach_the_llm_and_are_refused_for_encoders() {
    let pair = json!({"query": "what is a reranker", "texts": ["A second-stage scorer."], "raw_scores": true});
    let mut scores = Vec::new();
    for args in [
        vec!["--max-length", "224"],
        vec![
            "--max-length",
            "224",
            "--prompt-template",
            "Query: {query}\nDocument: {document}\nRelevant:",
        ],
    ] {
        let server = Server::launch(support::Launch {
            model: family_dir("qwen3-reranker").display().to_string(),
            args: args.into_iter().map(String::from).collect(),
            worker_dir: Some(support::bin_dir()),
            ..Default::default()
        })
        .unwrap();
        server.wait_ready(Duration::from_secs(90));
        let (status, text) =
            http(server.http_port, "POST", "/rerank", Some(&pair.to_string())).unwrap();
        assert_eq!(status, 200, "{text}");
        scores.push(
            serde_json::from_str::<Value>(&text).unwrap()[0]["score"]
                .as_f64()
                .unwrap(),
        );
    }
    assert!(
        (scores[0] - scores[1]).abs() > 1e-4,
        "the template changes the prompt: {scores:?}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ce-supervisor"))
        .arg("--model")
        .arg(family_dir("roberta"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--instruction", "find it"])
        .env("CE_LOG", "error")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ce-supervisor");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no served model is one"), "{stderr}");
}
