//! The HTTP front end on the metrics port: `POST /rerank` in
//! text-embeddings-inference's request and response shapes (so its clients
//! work unchanged), `GET /health`, `GET /info`, `GET /metrics` — each
//! translating JSON to and from the [`Api`].

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::{self, Api, ApiError, RerankInput, Side, http_refusal};

pub use ce_http_types::{RankBody, RerankBody};

/// The router, over `api`.
pub fn router(api: Api) -> axum::Router {
    // The key is checked before the body is read: a client without it
    // costs no body. (The last layer added runs first.)
    let guarded = axum::Router::new()
        .route("/rerank", post(rerank_handler))
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
                http_refusal(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Validation",
                    format!("request body over max_request_bytes ({limit} bytes)"),
                )
            } else {
                http_refusal(
                    StatusCode::BAD_REQUEST,
                    "Validation",
                    format!("request body: {e}"),
                )
            }
        }
        Err(_) => http_refusal(
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
        http_refusal(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong API key (Authorization: Bearer …)".into(),
        )
    }
}

async fn rerank_handler(
    State(api): State<Api>,
    body: Result<Json<RerankBody>, JsonRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        Err(rejection) => {
            // Size and time were checked as the body was read (`read_body`).
            let status = rejection.status();
            let message = rejection.body_text();
            let refused: Result<(), _> = Err(ApiError::InvalidArgument(message.clone()));
            api.record("http_rerank", started, &refused);
            return http_refusal(status, "Validation", message);
        }
    };
    let call = async {
        let side = match body.truncation_direction.as_deref() {
            None | Some("Right") | Some("right") => Side::Right,
            Some("Left") | Some("left") => Side::Left,
            Some(other) => {
                return Err(ApiError::InvalidArgument(format!(
                    "truncation_direction: {other:?} is neither \"Right\" nor \"Left\""
                )));
            }
        };
        let input = RerankInput {
            query: body.query,
            documents: body.texts,
            truncation: api::truncation(body.truncate, side),
            raw_scores: body.raw_scores,
            return_documents: body.return_text,
            top_n: None,
        };
        let ranking = api.rerank(input).await?;
        Ok(ranking
            .ranks
            .into_iter()
            .map(|r| RankBody {
                index: r.index,
                score: r.score,
                text: r.document,
            })
            .collect::<Vec<_>>())
    };
    api.recorded("http_rerank", None, call)
        .await
        .map(Json)
        .into_response()
}

async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    http_refusal(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("no route {method} {uri}; routes: POST /rerank, GET /health, /info, /metrics"),
    )
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    http_refusal(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{uri} does not take {method}"),
    )
}

async fn health(State(api): State<Api>) -> (StatusCode, &'static str) {
    if api.core().has_capacity() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn info(State(api): State<Api>) -> Json<api::Info> {
    Json(api.info())
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let core = api.core();
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        core.metrics.render(core.process_figures()),
    )
}
