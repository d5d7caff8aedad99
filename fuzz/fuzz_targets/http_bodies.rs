//! The HTTP routes' JSON bodies as a client sends them: parsing must never
//! panic (deep nesting, huge numbers, bad UTF-8, escapes), and a body
//! that parses survives a round trip unchanged.
#![no_main]

use ce_http_types::RerankBody;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<RerankBody>(data) {
        let text = serde_json::to_string(&body).expect("a parsed body serializes");
        let again: RerankBody = serde_json::from_str(&text).expect("and parses again");
        assert_eq!(again, body);
    }
});
