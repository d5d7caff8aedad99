//! A GPU replica that cannot start: given up at once, said in one line
//! naming the device and the cause (log, `/info`, gRPC `Info`), readiness
//! saying no replica serves. The CPU build's worker is tested on every
//! run; the CUDA variant's (`scripts/build_cuda.sh`, which `scripts/test.sh`
//! runs and points `CE_CUDA_VARIANT` and `CE_CUDA_STUB_DIR` at) without a
//! driver and with the toolkit's stub driver.

use std::path::{Path, PathBuf};

use super::*;

/// What a server whose only replica is on `cuda:0` says about it.
struct Refusal {
    /// `/info`'s `replicas[0].error`.
    info: String,
    /// gRPC `Info`'s `replicas[0].error`.
    grpc: String,
    /// The log's lines that give the replica up.
    log_lines: Vec<String>,
}

/// Starts a server with one replica on `cuda:0`, workers from `worker_dir`,
/// extra environment `env`; waits until its slot is given up and checks
/// what must hold whatever the cause: readiness 503, requests UNAVAILABLE,
/// no retry.
async fn refused(worker_dir: &Path, env: &[(&str, String)]) -> Refusal {
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("supervisor.log");
    let server = Server::launch(support::Launch {
        model: support::model_dir().display().to_string(),
        args: ["--device", "cuda:0", "--replicas", "1", "--tokenizers", "1"]
            .map(String::from)
            .to_vec(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        worker_dir: Some(worker_dir.to_path_buf()),
        on_drop: support::OnDrop::Kill,
        log_file: Some(log.clone()),
        ..Default::default()
    })
    .expect("the supervisor starts whatever its replicas do");
    let error = || {
        let (_, info) = http(server.http_port, "GET", "/info", None).unwrap();
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        info["replicas"][0]["error"].as_str().map(String::from)
    };
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let info = loop {
        match error() {
            Some(e) if e.contains("cannot start") => break e,
            _ if std::time::Instant::now() > until => panic!("never given up: {:?}", error()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(
        info.starts_with("replica 0 cannot start: cuda:0: "),
        "{info}"
    );
    assert!(info.ends_with("(not retried)"), "{info}");
    assert!(!info.contains('\n'), "one line, no backtrace: {info}");
    let (status, health) = http(server.http_port, "GET", "/health", None).unwrap();
    assert_eq!(status, 503, "{health}");
    let mut client = server.client().await;
    let e = client
        .rerank(support::two_document_rerank())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let grpc = client
        .info(ce_proto::v1::InfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .replicas[0]
        .error
        .clone();
    // Given up means no retry: nothing restarts or fails again later.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed_starts = support::metric(
        server.http_port,
        "worker_start_failures_total{role=\"model\"}",
    );
    assert_eq!(failed_starts, 0.0, "a hopeless start was retried");
    assert_eq!(error().as_deref(), Some(info.as_str()));
    drop(client);
    drop(server);
    let log_lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("cuda:0"))
        .map(String::from)
        .collect();
    Refusal {
        info,
        grpc,
        log_lines,
    }
}

/// The cause must be said once in the log, and be the same everywhere.
fn said_once(refusal: &Refusal) {
    assert_eq!(refusal.grpc, refusal.info);
    assert_eq!(
        refusal.log_lines.len(),
        1,
        "the cause in one line: {:#?}",
        refusal.log_lines
    );
    assert!(
        refusal.log_lines[0].contains(&refusal.info),
        "{:?} does not say {:?}",
        refusal.log_lines[0],
        refusal.info
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_build_asked_for_a_gpu_says_so_once_and_does_not_retry() {
    let refusal = refused(&support::bin_dir(), &[]).await;
    assert!(
        refusal
            .info
            .contains("this ce-model-worker was built without CUDA support; build the CUDA variant with scripts/build_cuda.sh"),
        "{}",
        refusal.info
    );
    said_once(&refusal);
}

/// The CUDA variant's folder and the stub driver's, when this run has them.
fn cuda_variant() -> Option<(PathBuf, PathBuf)> {
    let variant = std::env::var_os("CE_CUDA_VARIANT").map(PathBuf::from);
    let stub = std::env::var_os("CE_CUDA_STUB_DIR").map(PathBuf::from);
    match (variant, stub) {
        (Some(v), Some(s)) => {
            assert!(
                v.join("ce-model-worker").is_file() && s.join("libcuda.so.1").is_file(),
                "CE_CUDA_VARIANT / CE_CUDA_STUB_DIR name no CUDA build: run scripts/build_cuda.sh"
            );
            Some((v, s))
        }
        _ => {
            eprintln!(
                "skipped: no CUDA variant (scripts/test.sh builds it and sets CE_CUDA_VARIANT, CE_CUDA_STUB_DIR)"
            );
            None
        }
    }
}

/// A real driver makes these refusals impossible (the GPU opens).
fn has_nvidia_driver() -> bool {
    Path::new("/proc/driver/nvidia/version").exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cuda_worker_without_a_driver_names_the_missing_library() {
    let Some((variant, _)) = cuda_variant() else {
        return;
    };
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let refusal = refused(&variant, &[]).await;
    assert!(
        refusal
            .info
            .contains("cuda:0: libcuda.so.1 not found — is the NVIDIA driver installed?"),
        "{}",
        refusal.info
    );
    said_once(&refusal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cuda_worker_on_the_stub_driver_says_it_is_no_driver() {
    let Some((variant, stub)) = cuda_variant() else {
        return;
    };
    if has_nvidia_driver() {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let refusal = refused(&variant, &[("LD_LIBRARY_PATH", stub.display().to_string())]).await;
    assert!(
        refusal.info.contains(
            "libcuda.so.1 is the toolkit's link-time stub, not a driver — is the NVIDIA driver installed?"
        ) && refusal.info.contains("CUDA_ERROR_STUB_LIBRARY"),
        "{}",
        refusal.info
    );
    said_once(&refusal);
}
