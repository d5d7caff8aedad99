//! The HTTP routes' JSON bodies as a client sends them (TEI's /rerank,
//! Cohere v1/Jina, Cohere v2, vLLM's /score): parsing must never panic
//! (deep nesting, huge numbers, bad UTF-8, escapes), and a body that
//! parses survives a round trip unchanged.
#![no_main]

use ce_http_types::{CohereRerankBody, CohereV2RerankBody, RerankBody, ScoreBody};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trips<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_string(&body).expect("a parsed body serializes");
        let again: T = serde_json::from_str(&text).expect("and parses again");
        assert_eq!(again, body);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trips::<RerankBody>(data);
    round_trips::<CohereRerankBody>(data);
    round_trips::<CohereV2RerankBody>(data);
    round_trips::<ScoreBody>(data);
});
