//! `GET /openapi.json`: the HTTP API described from its own types and
//! handlers (`utoipa`), so the document cannot drift from the routes; the
//! test suite checks a running server against it with schemathesis.

use axum::response::IntoResponse;
use utoipa::OpenApi;

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
    components(schemas(ce_http_types::DocumentIn, ce_http_types::DocumentOut, ce_http_types::Texts)),
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
pub async fn document() -> impl IntoResponse {
    (
        [("content-type", "application/json")],
        ApiDoc::openapi().to_json().unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc: serde_json::Value =
            serde_json::from_str(&ApiDoc::openapi().to_json().unwrap()).unwrap();
        for path in [
            "/rerank",
            "/v1/rerank",
            "/v2/rerank",
            "/score",
            "/v1/models",
            "/info",
            "/health",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let v2 = &doc["components"]["schemas"]["CohereV2RerankBody"];
        assert!(
            v2["required"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "model")
        );
    }
}
