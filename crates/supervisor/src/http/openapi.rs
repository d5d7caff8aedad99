//! `GET /openapi.json`: the HTTP API described from its own types and
//! handlers (`utoipa`), so the document cannot drift from the routes, with
//! this server's limits and model names written in (see [`with_limits`]);
//! the test suite checks a running server against it with schemathesis.

use axum::extract::State;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::ErrorShape;
use crate::api::Api;

/// The API document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ce-supervisor",
        description = "Cross-encoder reranking in the shapes of text-embeddings-inference (/rerank), Cohere v1 and Jina (/v1/rerank), Cohere v2 (/v2/rerank) and vLLM (/score, /v1/models). `relevance_score` and `score` are the model's activation of its relevant label: the sigmoid of a one-logit model, the softmax probability of label 1 of a two-label model (raw_scores on /rerank: that label's logit)."
    ),
    paths(
        super::rerank_handler,
        super::compat::cohere_v1_rerank,
        super::compat::cohere_v2_rerank,
        super::compat::score,
        super::compat::models,
        super::info,
        super::health,
        super::metrics,
        document,
    ),
    components(schemas(
        ce_http_types::DocumentIn,
        ce_http_types::DocumentOut,
        ce_http_types::Texts,
        ce_http_types::TeiError,
        ce_http_types::CohereError,
        ce_http_types::OpenAiError,
    )),
    tags(
        (name = "text-embeddings-inference", description = "TEI's rerank route, unchanged"),
        (name = "cohere", description = "Cohere v1 (and Jina) and v2 rerank"),
        (name = "vllm", description = "vLLM's score and model list"),
        (name = "server", description = "Health, info, metrics, this document"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "server",
    responses((status = 200, description = "The OpenAPI document", body = Object))
)]
pub async fn document(State(api): State<Api>) -> impl IntoResponse {
    let models = &api.core().models;
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let limits = Limits {
        instructions: models
            .iter()
            .any(|m| m.loaded.as_ref().is_ok_and(|f| f.prompt.is_some())),
        ..Limits::of(&api.core().settings)
    };
    axum::Json(with_limits(described(), &limits, &names))
}

/// What every scoring route (every `POST`) may refuse with, in its
/// family's error body (see [`ErrorShape`]): written in here once rather
/// than on each handler.
const REFUSALS: [(u16, &str); 10] = [
    (
        400,
        "Not JSON; on the Cohere and vLLM routes also invalid input",
    ),
    (401, "Missing or wrong API key"),
    (
        404,
        "A model not served here (the message lists the served ones)",
    ),
    (408, "The body did not arrive within http_body_timeout_ms"),
    (413, "The body is over max_request_bytes"),
    (415, "Not application/json"),
    (
        422,
        "JSON of the wrong shape (the field named); on /rerank also invalid input",
    ),
    (
        429,
        "max_queue_pairs or max_queue_tokens reached; retry later",
    ),
    (
        503,
        "Loading, no replica of the model serving, or the model could not be loaded",
    ),
    (504, "request_timeout_ms passed"),
];

/// The document as the types and handlers describe it, with the refusals
/// of every scoring route and `/v1/score` (the same operation as `/score`).
pub fn described() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return doc;
    };
    if let Some(mut score) = paths.get("/score").cloned() {
        score["post"]["operationId"] = json!("score_v1");
        paths.insert("/v1/score".into(), score);
    }
    for (path, item) in paths.iter_mut() {
        let Some(Value::Object(responses)) = item.pointer_mut("/post/responses") else {
            continue;
        };
        let schema = match ErrorShape::of_path(path) {
            ErrorShape::Tei => "TeiError",
            ErrorShape::Cohere => "CohereError",
            ErrorShape::OpenAi => "OpenAiError",
        };
        for (status, description) in REFUSALS {
            responses.insert(
                status.to_string(),
                json!({
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}},
                }),
            );
        }
    }
    doc
}

/// The limits a request must keep on this server, as the document states them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_documents`.
    pub documents: usize,
    /// `max_input_chars`.
    pub chars: usize,
    /// `max_chunks_per_doc`.
    pub chunks: usize,
    /// `max_tokens_per_doc`.
    pub doc_tokens: usize,
    /// Whether any served model takes an `instruction` (an LLM reranker):
    /// without one the field is left out of the document, since every
    /// model would refuse it.
    pub instructions: bool,
}

impl Limits {
    /// The limits of `settings`.
    pub fn of(settings: &crate::config::Settings) -> Self {
        Self {
            documents: settings.max_documents,
            chars: settings.max_input_chars,
            chunks: settings.max_chunks_per_doc,
            doc_tokens: settings.max_tokens_per_doc,
            instructions: false,
        }
    }
}

/// `doc` with this server's limits as schema bounds (`maxItems`,
/// `maxLength`, `maximum`) and its served model names (and `""`, the
/// default) as the only values of `model`: what the types alone cannot
/// know.
pub fn with_limits(mut doc: Value, limits: &Limits, models: &[String]) -> Value {
    let Some(schemas) = doc.pointer_mut("/components/schemas") else {
        return doc;
    };
    let mut set = |path: &str, key: &str, value: Value| {
        if let Some(Value::Object(field)) = schemas.pointer_mut(path) {
            field.insert(key.into(), value);
        }
    };
    for body in BODIES {
        let at = |field: &str| format!("/{body}/properties/{field}");
        set(&at("query"), "maxLength", json!(limits.chars));
        for list in ["texts", "documents"] {
            set(&at(list), "maxItems", json!(limits.documents));
            set(
                &format!("{}/items", at(list)),
                "maxLength",
                json!(limits.chars),
            );
        }
        set(&at("max_chunks_per_doc"), "maximum", json!(limits.chunks));
        set(
            &at("max_tokens_per_doc"),
            "maximum",
            json!(limits.doc_tokens),
        );
        // "" is the default model's other spelling (a proto3 string's
        // default, so gRPC clients send it), accepted on every route.
        let mut names: Vec<Value> = models.iter().map(|m| json!(m)).collect();
        names.push(json!(""));
        if body != "CohereV2RerankBody" {
            names.push(Value::Null);
        }
        set(&at("model"), "enum", Value::Array(names));
    }
    set("/DocumentIn/oneOf/0", "maxLength", json!(limits.chars));
    set("/Texts/oneOf/0", "maxLength", json!(limits.chars));
    set("/Texts/oneOf/1", "maxItems", json!(limits.documents));
    set("/Texts/oneOf/1", "minItems", json!(1));
    set("/Texts/oneOf/1/items", "maxLength", json!(limits.chars));
    // `text_1` holds queries: not blank, unlike documents.
    let query =
        json!({"type": "string", "minLength": 1, "pattern": r"\S", "maxLength": limits.chars});
    set(
        "/ScoreBody/properties",
        "text_1",
        json!({
            "description": "Queries: one, or one per text_2.",
            "oneOf": [query, {"type": "array", "items": query, "minItems": 1, "maxItems": limits.documents}],
        }),
    );
    if !limits.instructions {
        for body in BODIES {
            if let Some(Value::Object(properties)) =
                schemas.pointer_mut(&format!("/{body}/properties"))
            {
                properties.remove("instruction");
            }
        }
    }
    doc
}

/// The request bodies of the scoring routes.
const BODIES: [&str; 4] = [
    "RerankBody",
    "CohereRerankBody",
    "CohereV2RerankBody",
    "ScoreBody",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described_with_the_servers_limits() {
        let limits = Limits {
            documents: 7,
            chars: 100,
            chunks: 3,
            doc_tokens: 900,
            instructions: false,
        };
        let doc = with_limits(described(), &limits, &["a".into(), "b".into()]);
        for path in [
            "/rerank",
            "/v1/rerank",
            "/v2/rerank",
            "/score",
            "/v1/score",
            "/v1/models",
            "/info",
            "/health",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        // The served names and "" (the default) are the only models; v2
        // requires one, the other routes also take null.
        let models =
            |body: &str| doc["components"]["schemas"][body]["properties"]["model"]["enum"].clone();
        assert_eq!(models("RerankBody"), json!(["a", "b", "", null]));
        assert_eq!(models("ScoreBody"), json!(["a", "b", "", null]));
        assert_eq!(models("CohereV2RerankBody"), json!(["a", "b", ""]));
        let v2 = &doc["components"]["schemas"]["CohereV2RerankBody"];
        assert!(
            v2["properties"]["instruction"].is_null(),
            "no LLM, no instruction"
        );
        let llm = Limits {
            instructions: true,
            ..limits
        };
        let with = with_limits(described(), &llm, &["a".into()]);
        assert!(
            with["components"]["schemas"]["RerankBody"]["properties"]["instruction"].is_object()
        );
        assert!(
            v2["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "model")
        );
    }
}
