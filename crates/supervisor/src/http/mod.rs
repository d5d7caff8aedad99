//! The HTTP front end on the metrics port, each route translating JSON
//! to and from the [`Api`] in the shapes its clients already speak:
//! `POST /rerank` (text-embeddings-inference), `POST /v1/rerank` (Cohere v1
//! and Jina), `POST /v2/rerank` (Cohere v2), `POST /score` and `/v1/score`
//! (vLLM), `GET /v1/models`, plus `GET /health`, `/info`, `/metrics` and
//! `/openapi.json` (see [`openapi`]). Errors come in each family's shape
//! ([`errors`]).

pub mod compat;
pub mod errors;
pub mod openapi;

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::{self, Api, ApiError, Chunking, RerankInput, Side};
pub use errors::ErrorShape;

pub use ce_http_types::{ChunkBody, RankBody, RerankBody, TruncationSide};

/// The router, over `api`.
pub fn router(api: Api) -> axum::Router {
    // The key is checked before the body is read: a client without it
    // costs no body. (The last layer added runs first.)
    let guarded = axum::Router::new()
        .route("/rerank", post(rerank_handler))
        .route("/v1/rerank", post(compat::cohere_v1_rerank))
        .route("/v2/rerank", post(compat::cohere_v2_rerank))
        .route("/score", post(compat::score))
        .route("/v1/score", post(compat::score))
        .route("/v1/models", get(compat::models))
        .route("/info", get(info))
        .route_layer(axum::middleware::from_fn_with_state(api.clone(), read_body))
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_key,
        ));
    let body_limit = axum::extract::DefaultBodyLimit::max(api.core().settings.max_request_bytes);
    axum::Router::new()
        .merge(guarded)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(body_limit)
        .with_state(api)
}

/// Reads the whole request body first, within `http_body_timeout_ms` (408
/// after it) and `max_request_bytes` (413 beyond it), so no handler waits
/// on a client that trickles its body and no route can be sent more.
async fn read_body(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let settings = &api.core().settings;
    let (limit, within) = (
        settings.max_request_bytes,
        std::time::Duration::from_millis(settings.http_body_timeout_ms),
    );
    let shape = ErrorShape::of_path(request.uri().path());
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(within, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            let request = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
            next.run(request).await
        }
        Ok(Err(e)) => {
            let too_large =
                std::iter::successors(Some(&e as &(dyn std::error::Error + 'static)), |e| {
                    e.source()
                })
                .any(|e| e.is::<http_body_util::LengthLimitError>());
            if too_large {
                shape.refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Validation",
                    format!("request body over max_request_bytes ({limit} bytes)"),
                )
            } else {
                shape.refusal(
                    StatusCode::BAD_REQUEST,
                    "Validation",
                    format!("request body: {e}"),
                )
            }
        }
        Err(_) => shape.refusal(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!(
                "request body not received within http_body_timeout_ms ({} ms)",
                within.as_millis()
            ),
        ),
    }
}

async fn require_key(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if crate::auth::authorized(api.core().settings.api_key.as_deref(), header) {
        next.run(request).await
    } else {
        ErrorShape::of_path(request.uri().path()).refusal(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong API key (Authorization: Bearer …)".into(),
        )
    }
}

/// `POST /rerank`: text-embeddings-inference's rerank (its clients work
/// unchanged), plus `model` and opt-in windows for long documents.
#[utoipa::path(
    post,
    path = "/rerank",
    tag = "text-embeddings-inference",
    request_body = RerankBody,
    responses(
        (status = 200, description = "Ranks, best first", body = Vec<RankBody>),
    )
)]
pub async fn rerank_handler(
    State(api): State<Api>,
    body: Result<Json<RerankBody>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        // Size and time were checked as the body was read (`read_body`).
        Err(r) => return rejected(&api, "http_rerank", started, ErrorShape::Tei, &r),
    };
    let model = body.model.clone();
    let call = async {
        let side = match body.truncation_direction {
            None | Some(TruncationSide::Right) => Side::Right,
            Some(TruncationSide::Left) => Side::Left,
        };
        let input = RerankInput {
            model: body.model,
            query: body.query,
            documents: body.texts,
            truncation: api::truncation(body.truncate, side),
            raw_scores: body.raw_scores,
            return_documents: body.return_text,
            top_n: None,
            chunking: body.max_chunks_per_doc.map(|n| Chunking {
                max_chunks: Some(n),
                max_tokens: None,
            }),
            instruction: body.instruction,
        };
        let offsets = body.return_chunk_offsets;
        let ranking = api.rerank(input).await?;
        Ok(ranking
            .ranks
            .into_iter()
            .map(|r| RankBody {
                index: r.index,
                score: r.score,
                text: r.document,
                chunk: chunk_body(offsets, r.chunk),
            })
            .collect::<Vec<_>>())
    };
    match api
        .recorded("http_rerank", model.as_deref(), None, call)
        .await
    {
        Ok(ranks) => Json(ranks).into_response(),
        Err(e) => ErrorShape::Tei.error(&e),
    }
}

/// Records a body that did not parse as the route's JSON and answers it
/// in `shape`.
fn rejected(
    api: &Api,
    method: &str,
    started: Instant,
    shape: ErrorShape,
    rejection: &JsonRejection,
) -> Response {
    let refused: Result<(), _> = Err(ApiError::InvalidArgument(rejection.body_text()));
    api.record(method, None, started, &refused);
    shape.rejected(rejection)
}

/// The deciding window of a rank, when the client asked for it.
pub fn chunk_body(asked: bool, chunk: Option<api::ChunkInfo>) -> Option<ChunkBody> {
    let chunk = chunk.filter(|_| asked)?;
    Some(ChunkBody {
        start: chunk.start,
        end: chunk.end,
        chunks: chunk.windows,
    })
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ErrorShape::of_path(uri.path()).refusal(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "no route {method} {uri}; routes: POST /rerank, /v1/rerank, /v2/rerank, /score, /v1/score; GET /v1/models, /health, /info, /metrics, /openapi.json"
        ),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ErrorShape::of_path(uri.path()).refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{uri} does not take {method}"),
    )
}

/// `GET /health`: 200 while a replica and a tokenizer serve, else 503.
#[utoipa::path(
    get,
    path = "/health",
    tag = "server",
    responses(
        (status = 200, description = "Serving", body = String, content_type = "text/plain"),
        (status = 503, description = "Not serving", body = String, content_type = "text/plain"),
    )
)]
pub async fn health(State(api): State<Api>) -> (StatusCode, &'static str) {
    if api.core().has_capacity() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

/// `GET /info`: what is served, with which limits, and each replica's state.
#[utoipa::path(
    get,
    path = "/info",
    tag = "server",
    responses(
        (status = 200, description = "The server", body = api::Info),
        (status = 401, description = "Missing or wrong API key", body = ce_http_types::TeiError),
    )
)]
pub async fn info(State(api): State<Api>) -> Json<api::Info> {
    Json(api.info())
}

/// `GET /metrics`: Prometheus' OpenMetrics text.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses(
        (status = 200, description = "Every process's figures", body = String,
         content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
pub async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let core = api.core();
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics.render(core.process_figures()),
    )
}
