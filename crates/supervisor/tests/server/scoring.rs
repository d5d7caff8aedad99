//! Scores through every topology equal the bare engine's; rerank orders, cuts and echoes; concurrent clients; the Tokenize and ScoreTokens stages.

use super::*;

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
    // Info names the integer kernel each replica runs on this CPU.
    let info = client
        .info(ce_proto::v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    // The default model's heads are 32 wide.
    let attention = match model_worker::encoder::cpu::attention_bf16::unit_for(32) {
        Some(unit) => format!(", attention in bf16 on {}", unit.as_str()),
        None => String::new(),
    };
    let smoothed = match model_worker::int8_smoothing() {
        true => ", smoothed",
        false => "",
    };
    let kernel = format!(
        "cpu encoder, i8 on {}{smoothed}{attention}",
        model_worker::int8_kernel().as_str()
    );
    assert_eq!(info.replicas.len(), 2);
    for replica in &info.replicas {
        assert_eq!(replica.kernel, kernel, "{replica:?}");
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_score_tokens_isolate_the_two_stages() {
    use ce_proto::v1::{ScoreTokensRequest, TokenizeRequest, TokenizedPair};

    let pairs = fixture_pairs();
    let want = engine_logits(&pairs);
    // Small chunks over two workers, each encoding its documents on two
    // threads (the library's parallelism on): the ids must still come back
    // in order.
    let server = Server::start(&[
        "--tokenizers",
        "2",
        "--tokenize-chunk",
        "4",
        "--tokenizer-threads",
        "2",
    ]);
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_close(&again.scores, &want[..1], "after refusals");
}
