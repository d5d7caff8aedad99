//! The HTTP front end on the metrics port: `POST /rerank` in
//! text-embeddings-inference's request and response shapes (so its clients
//! work unchanged), `GET /health`, `GET /info`, `GET /metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokenizer_worker::Truncation;

use crate::core::Core;
use crate::grpc::{ranking, rerank};
use crate::request::ApiError;

/// text-embeddings-inference's `/rerank` request.
#[derive(Debug, Deserialize)]
pub struct RerankBody {
    /// The query.
    pub query: String,
    /// Documents to rank.
    pub texts: Vec<String>,
    /// Raw logits instead of the activation.
    #[serde(default)]
    pub raw_scores: bool,
    /// Echo each document in the answer.
    #[serde(default)]
    pub return_text: bool,
    /// Truncate over-long pairs (default true).
    #[serde(default)]
    pub truncate: Option<bool>,
    /// `Right` (default) or `Left`.
    #[serde(default)]
    pub truncation_direction: Option<String>,
}

/// One entry of the `/rerank` answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct RankBody {
    /// Position in `texts`.
    pub index: usize,
    /// Score.
    pub score: f32,
    /// The document, if asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
    error_type: &'static str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error_type = match &self {
            ApiError::InvalidArgument(_) => "Validation",
            ApiError::Overloaded(_) => "Overloaded",
            ApiError::Unavailable(_) => "Unhealthy",
            ApiError::Internal(_) => "Backend",
            ApiError::DeadlineExceeded(_) => "Timeout",
        };
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
                error_type,
            }),
        )
            .into_response()
    }
}

/// The router, over `core`.
pub fn router(core: Arc<Core>) -> axum::Router {
    let guarded = axum::Router::new()
        .route("/rerank", post(rerank_handler))
        .route("/info", get(info))
        .route_layer(axum::middleware::from_fn_with_state(
            core.clone(),
            require_key,
        ));
    let body_limit = axum::extract::DefaultBodyLimit::max(core.settings.max_request_bytes);
    axum::Router::new()
        .merge(guarded)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(body_limit)
        .with_state(core)
}

async fn require_key(
    State(core): State<Arc<Core>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    if crate::auth::authorized(core.settings.api_key.as_deref(), header) {
        next.run(request).await
    } else {
        let body = ErrorBody {
            error: "missing or wrong API key (Authorization: Bearer …)".into(),
            error_type: "Unauthorized",
        };
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    }
}

/// An error answer in the API's JSON shape, for what fails before a
/// handler runs (body, route, method).
fn refusal(status: StatusCode, error_type: &'static str, error: String) -> Response {
    (status, Json(ErrorBody { error, error_type })).into_response()
}

async fn rerank_handler(
    State(core): State<Arc<Core>>,
    body: Result<Json<RerankBody>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            core.metrics.observe_request(
                "http_rerank",
                "invalid_argument",
                started.elapsed().as_secs_f64(),
            );
            let status = rejection.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "request body over max_request_bytes ({} bytes)",
                    core.settings.max_request_bytes
                )
            } else {
                rejection.body_text()
            };
            return refusal(status, "Validation", message);
        }
    };
    let result = async {
        let truncation = match (body.truncate, body.truncation_direction.as_deref()) {
            (Some(false), _) => Truncation::Off,
            (_, None | Some("Right") | Some("right")) => Truncation::Right,
            (_, Some("Left") | Some("left")) => Truncation::Left,
            (_, Some(other)) => {
                return Err(ApiError::InvalidArgument(format!(
                    "truncation_direction: {other:?} is neither \"Right\" nor \"Left\""
                )));
            }
        };
        let (scored, texts) = rerank(&core, body.query, body.texts, truncation).await?;
        let scores: Vec<f32> = scored
            .first_logits()
            .map(|l| core.client_score(l, body.raw_scores))
            .collect();
        Ok(ranking(&scores, None)
            .into_iter()
            .map(|i| RankBody {
                index: i,
                score: scores[i],
                text: body.return_text.then(|| texts[i].clone()),
            })
            .collect::<Vec<_>>())
    }
    .await;
    let status = result
        .as_ref()
        .map_or_else(ApiError::status_label, |_| "ok");
    core.metrics
        .observe_request("http_rerank", status, started.elapsed().as_secs_f64());
    result.map(Json).into_response()
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    refusal(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no route {method} {uri}; routes: POST /rerank, GET /health, /info, /metrics"),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{uri} does not take {method}"),
    )
}

async fn health(State(core): State<Arc<Core>>) -> (StatusCode, &'static str) {
    if core.has_capacity().await {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn info(State(core): State<Arc<Core>>) -> Json<serde_json::Value> {
    let replicas: Vec<serde_json::Value> = core
        .replica_status()
        .await
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "replica": r.index, "model": r.plan.model, "dtype": r.plan.dtype, "device": r.plan.device,
                "threads": r.plan.threads, "serving": r.serving, "pairs": r.metrics.pairs,
                "rss_bytes": r.metrics.rss_bytes, "error": r.error,
            })
        })
        .collect();
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "model": core.served.model,
        "max_length": core.served.max_length,
        "score_activation": core.served.activation,
        "max_documents": core.settings.max_documents,
        "max_input_chars": core.settings.max_input_chars,
        "max_batch_tokens": core.settings.max_batch_tokens,
        "max_batch_size": core.settings.max_batch_size,
        "tokenizers": core.settings.tokenizers,
        "replicas": replicas,
        "ready": core.is_ready(),
    }))
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    let figures = core.process_figures().await;
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics.render(figures),
    )
}
