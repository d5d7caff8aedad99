//! The short soak CI runs: `ce-soak` for `CE_SOAK_SECONDS` (default 60)
//! against the `ce-supervisor` that `cargo test --workspace` built beside
//! it. `scripts/soak.sh 10m` runs the long one on a release build.

use std::path::Path;
use std::process::Command;

#[test]
fn a_short_soak_loses_nothing_and_holds_its_memory() {
    let exe = Path::new(env!("CARGO_BIN_EXE_ce-soak"));
    let supervisor = exe.with_file_name("ce-supervisor");
    assert!(
        supervisor.exists(),
        "{} missing: run `cargo test --workspace` (it builds the supervisor's executables) or `cargo build -p supervisor`",
        supervisor.display()
    );
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/minilm-l6-ce");
    assert!(
        model.join("model.safetensors").is_file(),
        "default model missing: run scripts/fetch_model.sh (scripts/test.sh does)"
    );
    let seconds = std::env::var("CE_SOAK_SECONDS").unwrap_or_else(|_| "60".into());
    let status = Command::new(exe)
        .arg(&seconds)
        .args(["--probe-seconds", "10", "--model"])
        .arg(&model)
        .status()
        .expect("run ce-soak");
    assert!(status.success(), "the {seconds} s soak failed: {status}");
}
