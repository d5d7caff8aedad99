//! The `ce.v1` gRPC API (see `proto/ce/v1/cross_encoder.proto`).
//!
//! * [`v1`] — messages plus the generated `CrossEncoder` client and server.
//! * [`codec`] — the protobuf codec they use (bad bytes are `INVALID_ARGUMENT`).
//! * [`FILE_DESCRIPTOR_SET`] — the encoded descriptors, for server reflection.
#![warn(missing_docs)]

pub mod codec;

/// Messages, client and server of package `ce.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("ce.v1");
}

/// Encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ce_v1_descriptor");

#[cfg(test)]
mod tests {
    use super::v1::*;
    use prost::Message;

    #[test]
    fn messages_round_trip() {
        let req = RerankRequest {
            query: "q".into(),
            documents: vec!["a".into(), "b".into()],
            top_n: Some(1),
            truncation_direction: TruncationDirection::Left as i32,
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(RerankRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    #[test]
    fn descriptor_set_names_the_service() {
        let set = prost_types_free_check(super::FILE_DESCRIPTOR_SET);
        assert!(set, "descriptor set should mention ce.v1.CrossEncoder");
    }

    // The descriptor is protobuf bytes; the service name appears verbatim.
    fn prost_types_free_check(bytes: &[u8]) -> bool {
        bytes
            .windows(b"CrossEncoder".len())
            .any(|w| w == b"CrossEncoder")
    }
}
