//! HTTP errors in the shape each route's clients parse: text-embeddings-
//! inference's `{error, error_type}`, Cohere's `{message}` (with Jina's
//! `detail`), vLLM's (OpenAI's) `{error: {message, type, code}}`. The
//! status comes from [`ApiError`]; invalid input is TEI's 422 on its
//! routes and 400 on the others, as their servers answer.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ce_http_types::{CohereError, OpenAiError, OpenAiErrorDetail, TeiError};

use crate::api::ApiError;

/// Which client family a route answers, and so the error body it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `/rerank`, `/info` and the server's own routes.
    Tei,
    /// `/v1/rerank` (Cohere v1, Jina) and `/v2/rerank` (Cohere v2).
    Cohere,
    /// `/score`, `/v1/score`, `/v1/models` (vLLM).
    OpenAi,
}

impl ErrorShape {
    /// The shape of the route at `path` (for the layers that answer before
    /// a handler runs: the API key, the body limits).
    pub fn of_path(path: &str) -> Self {
        match path {
            "/v1/rerank" | "/v2/rerank" => Self::Cohere,
            "/score" | "/v1/score" | "/v1/models" => Self::OpenAi,
            _ => Self::Tei,
        }
    }

    /// An error answer: `status`, with `message` in this shape's body;
    /// `class` is TEI's `error_type` (`Validation`, `Overloaded`, …).
    pub fn refusal(self, status: StatusCode, class: &str, message: String) -> Response {
        match self {
            Self::Tei => (
                status,
                Json(TeiError {
                    error: message,
                    error_type: class.into(),
                }),
            )
                .into_response(),
            Self::Cohere => (
                status,
                Json(CohereError {
                    detail: message.clone(),
                    message,
                }),
            )
                .into_response(),
            Self::OpenAi => (
                status,
                Json(OpenAiError {
                    error: OpenAiErrorDetail {
                        message,
                        kind: openai_type(status).into(),
                        code: status.as_u16(),
                    },
                }),
            )
                .into_response(),
        }
    }

    /// The answer to a failed call.
    pub fn error(self, error: &ApiError) -> Response {
        let status = match (self, error) {
            (Self::Cohere | Self::OpenAi, ApiError::InvalidArgument(_)) => StatusCode::BAD_REQUEST,
            _ => StatusCode::from_u16(error.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        };
        self.refusal(status, error.http_error_type(), error.to_string())
    }

    /// The answer to a body that is not the route's JSON: 400 for a syntax
    /// error, 415 without a JSON content type, 422 for JSON of the wrong
    /// shape (a missing or mistyped field, named).
    pub fn rejected(self, rejection: &JsonRejection) -> Response {
        self.refusal(rejection.status(), "Validation", rejection.body_text())
    }
}

/// vLLM's (OpenAI's) error `type` for a status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 415 | 422 => "BadRequestError",
        401 => "AuthenticationError",
        404 => "NotFoundError",
        408 | 504 => "TimeoutError",
        429 => "RateLimitError",
        503 => "ServiceUnavailableError",
        _ => "InternalServerError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> (u16, serde_json::Value) {
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn each_family_gets_its_shape_and_status() {
        let invalid = ApiError::InvalidArgument("query: must not be empty".into());
        let (status, tei) = body(ErrorShape::Tei.error(&invalid)).await;
        assert_eq!(status, 422);
        assert_eq!(tei["error_type"], "Validation");
        let (status, cohere) = body(ErrorShape::of_path("/v2/rerank").error(&invalid)).await;
        assert_eq!(status, 400);
        assert_eq!(cohere["message"], cohere["detail"]);
        let missing = ApiError::NotFound("model \"x\" is not served here".into());
        let (status, openai) = body(ErrorShape::of_path("/score").error(&missing)).await;
        assert_eq!(status, 404);
        assert_eq!(openai["error"]["type"], "NotFoundError");
        assert_eq!(openai["error"]["code"], 404);
        assert_eq!(ErrorShape::of_path("/metrics"), ErrorShape::Tei);
    }
}
