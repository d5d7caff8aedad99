//! Generates the ce.v1 client and server with a vendored protoc, so no system
//! protoc is needed; also writes the file descriptor set that server
//! reflection serves.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; this runs before anything else.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("ce_v1_descriptor.bin"))
        .codec_path("crate::codec::ApiCodec")
        .compile_protos(&["proto/ce/v1/cross_encoder.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
