//! The routes of other servers' clients: Cohere v1 and Jina
//! (`/v1/rerank`), Cohere v2 (`/v2/rerank`), vLLM's score API (`/score`,
//! `/v1/score`) and the model list (`/v1/models`). Each translates its
//! body into the [`Api`]'s terms and back; long documents are scored in
//! windows on both rerank routes, as Cohere's hosted API scores them.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use ce_http_types::{
    ApiVersion, BilledUnits, CohereRerankBody, CohereV2RerankBody, DocumentIn, DocumentOut,
    MetaTokens, ModelCard, ModelList, OpenAiError, RerankMeta, RerankResponseBody, RerankResult,
    ScoreBody, ScoreData, ScoreResponseBody, ScoreUsage, Texts, Usage,
};

use super::{ErrorShape, chunk_body, rejected};
use crate::api::{self, Api, ApiError, Chunking, Ranking, RerankInput, Side};

/// Windows Cohere bills as one search unit.
const WINDOWS_PER_SEARCH_UNIT: u64 = 100;

/// `POST /v1/rerank`: Cohere v1's rerank, and Jina's (one response carries
/// both families' fields). Documents are strings or objects; long ones
/// are scored in at most `max_chunks_per_doc` windows.
#[utoipa::path(
    post,
    path = "/v1/rerank",
    tag = "cohere",
    request_body = CohereRerankBody,
    responses(
        (status = 200, description = "Ranked documents, best first", body = RerankResponseBody),
    )
)]
pub async fn cohere_v1_rerank(
    State(api): State<Api>,
    body: Result<Json<CohereRerankBody>, JsonRejection>,
) -> Response {
    const METHOD: &str = "http_v1_rerank";
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        Err(r) => return rejected(&api, METHOD, started, ErrorShape::Cohere, &r),
    };
    let model = body.model.clone();
    let call = async {
        let texts = document_texts(&body.documents, body.rank_fields.as_deref())?;
        let input = RerankInput {
            model: body.model,
            query: body.query,
            documents: texts,
            top_n: body.top_n,
            chunking: Some(Chunking {
                max_chunks: body.max_chunks_per_doc,
                max_tokens: None,
            }),
            instruction: body.instruction.clone(),
            ..RerankInput::default()
        };
        let ranking = api.rerank(input).await?;
        let echo = body.return_documents.unwrap_or(true);
        Ok(rerank_response(
            "1",
            ranking,
            |i| echo.then(|| document_out(&body.documents[i])),
            body.return_chunk_offsets,
        ))
    };
    respond(&api, METHOD, model.as_deref(), ErrorShape::Cohere, call).await
}

/// `POST /v2/rerank`: Cohere v2's rerank. `model` is required; documents
/// are strings, cut to `max_tokens_per_doc` tokens and scored in windows.
#[utoipa::path(
    post,
    path = "/v2/rerank",
    tag = "cohere",
    request_body = CohereV2RerankBody,
    responses(
        (status = 200, description = "Ranked documents, best first", body = RerankResponseBody),
    )
)]
pub async fn cohere_v2_rerank(
    State(api): State<Api>,
    body: Result<Json<CohereV2RerankBody>, JsonRejection>,
) -> Response {
    const METHOD: &str = "http_v2_rerank";
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        Err(r) => return rejected(&api, METHOD, started, ErrorShape::Cohere, &r),
    };
    let model = body.model.clone();
    let call = async {
        let max_tokens = body
            .max_tokens_per_doc
            .unwrap_or(api.core().settings.max_tokens_per_doc);
        let input = RerankInput {
            model: Some(body.model),
            query: body.query,
            documents: body.documents.clone(),
            top_n: body.top_n,
            chunking: Some(Chunking {
                max_chunks: None,
                max_tokens: Some(max_tokens),
            }),
            instruction: body.instruction.clone(),
            ..RerankInput::default()
        };
        let ranking = api.rerank(input).await?;
        let echo = body.return_documents.unwrap_or(false);
        let documents = body.documents;
        Ok(rerank_response(
            "2",
            ranking,
            |i| echo.then(|| DocumentOut::text(&documents[i])),
            body.return_chunk_offsets,
        ))
    };
    respond(&api, METHOD, Some(&model), ErrorShape::Cohere, call).await
}

/// `POST /score` and `/v1/score`: vLLM's score API. One `text_1` is
/// scored against every `text_2`; two lists pairwise.
#[utoipa::path(
    post,
    path = "/score",
    tag = "vllm",
    request_body = ScoreBody,
    responses(
        (status = 200, description = "One score per pair, in order", body = ScoreResponseBody),
    )
)]
pub async fn score(
    State(api): State<Api>,
    body: Result<Json<ScoreBody>, JsonRejection>,
) -> Response {
    const METHOD: &str = "http_score";
    let started = Instant::now();
    let body = match body {
        Ok(Json(body)) => body,
        Err(r) => return rejected(&api, METHOD, started, ErrorShape::OpenAi, &r),
    };
    let model = body.model.clone();
    let call = async {
        let pairs = score_pairs(body.text_1, body.text_2)?;
        let truncation = api::truncation(body.truncate, Side::Right);
        let list = api
            .score(
                body.model.as_deref(),
                pairs,
                truncation,
                false,
                body.instruction.clone(),
            )
            .await?;
        let name = api
            .core()
            .served_name(body.model.as_deref())
            .unwrap_or_default()
            .to_string();
        Ok(ScoreResponseBody {
            id: format!("score-{}", uuid::Uuid::new_v4().simple()),
            object: "list".into(),
            created: now_s(),
            model: name,
            data: list
                .scores
                .iter()
                .enumerate()
                .map(|(index, &score)| ScoreData {
                    index,
                    object: "score".into(),
                    score,
                })
                .collect(),
            usage: ScoreUsage {
                prompt_tokens: list.tokens,
                total_tokens: list.tokens,
            },
        })
    };
    respond(&api, METHOD, model.as_deref(), ErrorShape::OpenAi, call).await
}

/// `GET /v1/models`: the served models, OpenAI's list shape (as vLLM).
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "vllm",
    responses(
        (status = 200, description = "The served models", body = ModelList),
        (status = 401, description = "Missing or wrong API key", body = OpenAiError),
    )
)]
pub async fn models(State(api): State<Api>) -> Json<ModelList> {
    let created = api.core().started_s;
    Json(ModelList {
        object: "list".into(),
        data: api
            .models()
            .into_iter()
            .map(|m| ModelCard {
                id: m.name,
                object: "model".into(),
                created,
                owned_by: "ce-supervisor".into(),
                root: m.source,
                max_model_len: m.max_length,
                default: m.default,
            })
            .collect(),
    })
}

/// Runs `call` recorded under `method`, answering its error in `shape`.
async fn respond<T: serde::Serialize>(
    api: &Api,
    method: &str,
    model: Option<&str>,
    shape: ErrorShape,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Response {
    match api.recorded(method, model, None, call).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => shape.error(&e),
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The Cohere/Jina answer of a ranking; `echo(i)` is document `i` as it is
/// to be returned, if it is.
fn rerank_response(
    version: &str,
    ranking: Ranking,
    echo: impl Fn(usize) -> Option<DocumentOut>,
    offsets: bool,
) -> RerankResponseBody {
    let tokens = ranking.tokens;
    RerankResponseBody {
        id: uuid::Uuid::new_v4().to_string(),
        results: ranking
            .ranks
            .into_iter()
            .map(|r| RerankResult {
                index: r.index,
                relevance_score: r.score,
                document: echo(r.index),
                chunk: chunk_body(offsets, r.chunk),
            })
            .collect(),
        meta: RerankMeta {
            api_version: ApiVersion {
                version: version.into(),
            },
            billed_units: BilledUnits {
                search_units: (ranking.pairs as u64)
                    .div_ceil(WINDOWS_PER_SEARCH_UNIT)
                    .max(1),
            },
            tokens: MetaTokens {
                input_tokens: tokens,
            },
        },
        model: ranking.model,
        usage: Usage {
            total_tokens: tokens,
        },
    }
}

/// The text scored of each document: a string as is; of an object, its
/// `rank_fields` (default `text`): one field's value alone, several as
/// `field: value` lines in their order (Cohere's advice for structured
/// documents). A missing or non-string field is refused, named.
fn document_texts(
    documents: &[DocumentIn],
    rank_fields: Option<&[String]>,
) -> Result<Vec<String>, ApiError> {
    let default_fields = ["text".to_string()];
    let fields = match rank_fields {
        Some([]) => {
            return Err(ApiError::InvalidArgument(
                "rank_fields: must name at least one field".into(),
            ));
        }
        Some(fields) => fields,
        None => &default_fields[..],
    };
    documents
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            DocumentIn::Text(text) => Ok(text.clone()),
            DocumentIn::Fields(object) => {
                let mut parts = Vec::with_capacity(fields.len());
                for field in fields {
                    match object.get(field) {
                        Some(serde_json::Value::String(v)) => parts.push((field, v)),
                        Some(_) => {
                            return Err(ApiError::InvalidArgument(format!(
                                "documents[{i}].{field}: must be a string"
                            )));
                        }
                        None => {
                            return Err(ApiError::InvalidArgument(format!(
                                "documents[{i}]: has no field {field:?} (rank_fields: {})",
                                fields.join(", ")
                            )));
                        }
                    }
                }
                Ok(match parts.as_slice() {
                    [(_, only)] => (*only).clone(),
                    _ => parts
                        .iter()
                        .map(|(f, v)| format!("{f}: {v}"))
                        .collect::<Vec<_>>()
                        .join("\n"),
                })
            }
        })
        .collect()
}

/// A document as it is echoed: `{"text": …}` for a string, the object
/// whole.
fn document_out(document: &DocumentIn) -> DocumentOut {
    match document {
        DocumentIn::Text(text) => DocumentOut::text(text),
        DocumentIn::Fields(object) => DocumentOut(object.clone()),
    }
}

/// vLLM's pairing of `text_1` and `text_2`: a single text (or a list of
/// one) on either side goes with every text of the other; two longer
/// lists pair in order and must be as long.
fn score_pairs(text_1: Texts, text_2: Texts) -> Result<Vec<(String, String)>, ApiError> {
    let list = |t: Texts| match t {
        Texts::One(s) => vec![s],
        Texts::Many(v) => v,
    };
    let (qs, ds) = (list(text_1), list(text_2));
    Ok(match (qs.len(), ds.len()) {
        (1, _) => ds.into_iter().map(|d| (qs[0].clone(), d)).collect(),
        (_, 1) => qs.into_iter().map(|q| (q, ds[0].clone())).collect(),
        (a, b) if a == b => qs.into_iter().zip(ds).collect(),
        (a, b) => {
            return Err(ApiError::InvalidArgument(format!(
                "text_1 and text_2: {a} and {b} texts; two lists are scored pairwise and must be as long (or one a single text)"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_documents_are_scored_by_their_rank_fields() {
        let docs: Vec<DocumentIn> = serde_json::from_str(
            r#"["plain", {"text": "body", "id": 1}, {"title": "T", "text": "body"}]"#,
        )
        .unwrap();
        assert_eq!(document_texts(&docs[..2], None).unwrap(), ["plain", "body"]);
        let fields = ["title".to_string(), "text".to_string()];
        assert_eq!(
            document_texts(&docs[2..], Some(&fields)).unwrap(),
            ["title: T\ntext: body"]
        );
        let e = document_texts(&docs[1..2], Some(&fields)).unwrap_err();
        assert!(
            e.to_string()
                .contains("documents[0]: has no field \"title\""),
            "{e}"
        );
        let numeric: Vec<DocumentIn> = serde_json::from_str(r#"[{"text": 5}]"#).unwrap();
        assert!(
            document_texts(&numeric, None)
                .unwrap_err()
                .to_string()
                .contains("must be a string")
        );
        assert!(document_texts(&docs, Some(&[])).is_err());
    }

    #[test]
    fn score_texts_pair_as_vllm_pairs_them() {
        let one = |s: &str| Texts::One(s.into());
        let many = |v: &[&str]| Texts::Many(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(score_pairs(one("q"), many(&["a", "b"])).unwrap().len(), 2);
        assert_eq!(
            score_pairs(many(&["q", "r"]), many(&["a", "b"])).unwrap()[1],
            ("r".to_string(), "b".to_string())
        );
        assert_eq!(
            score_pairs(many(&["q"]), many(&["a", "b"])).unwrap().len(),
            2
        );
        assert!(score_pairs(many(&["q", "r", "s"]), many(&["a", "b"])).is_err());
        assert_eq!(score_pairs(many(&["q", "r"]), one("a")).unwrap().len(), 2);
        assert_eq!(
            score_pairs(many(&["q", "r"]), many(&["a"])).unwrap().len(),
            2
        );
        assert!(score_pairs(many(&[]), many(&["a", "b"])).is_err());
    }
}
