//! Health while loading and serving, reflection, SIGTERM draining, and a SIGKILLed supervisor taking its workers along.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_only_after_load_and_reflection_lists_the_api() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    // Model workers that take 1.5 s to start: a wrapper script execs the real one.
    let dir = tempfile::tempdir().unwrap();
    let real = support::bin_dir();
    std::os::unix::fs::symlink(
        real.join("ce-tokenizer-worker"),
        dir.path().join("ce-tokenizer-worker"),
    )
    .unwrap();
    let wrapper = dir.path().join("ce-model-worker");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nsleep 1.5\nexec {} \"$@\"\n",
            real.join("ce-model-worker").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let server = Server::spawn(&[], dir.path());
    let endpoint = format!("http://127.0.0.1:{}", server.grpc_port);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut health = HealthClient::new(channel.clone());
    let check = || HealthCheckRequest {
        service: "ce.v1.CrossEncoder".into(),
    };
    let first = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(
        first,
        ServingStatus::NotServing as i32,
        "serving before the model loaded"
    );
    let (status, _) = http(server.http_port, "GET", "/health", None).unwrap();
    assert_eq!(status, 503);
    let mut client = server.client().await;
    let early = client
        .rerank(RerankRequest {
            query: "q".into(),
            documents: vec!["d".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(early.unwrap_err().code(), Code::Unavailable);
    server.wait_ready(Duration::from_secs(60));
    let now = health.check(check()).await.unwrap().into_inner().status;
    assert_eq!(now, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"ce.v1.CrossEncoder".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_within_the_kubernetes_grace_period() {
    // The settings and grace period Kubernetes gets (deploy/kubernetes/).
    let manifests = support::workspace_root().join("deploy/kubernetes");
    let configmap = std::fs::read_to_string(manifests.join("configmap.yaml")).unwrap();
    let config: String = configmap
        .split_once("config.toml: |\n")
        .expect("the ConfigMap holds config.toml")
        .1
        .lines()
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let settings: toml::Table = config.parse().unwrap();
    let grace_ms = settings["shutdown_grace_ms"].as_integer().unwrap() as u64;
    let deployment = std::fs::read_to_string(manifests.join("deployment.yaml")).unwrap();
    let number_after = |key: &str| -> u64 {
        let at = deployment
            .find(key)
            .unwrap_or_else(|| panic!("{key} missing"))
            + key.len();
        deployment[at..]
            .trim_start_matches([':', ' ', '\n'])
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap()
    };
    let termination = Duration::from_secs(number_after("terminationGracePeriodSeconds"));
    let pre_stop = Duration::from_secs(number_after("sleep:\n                seconds"));
    // Drain, then at most 5 s for the workers to stop, after the preStop pause.
    assert!(
        pre_stop + Duration::from_millis(grace_ms) + Duration::from_secs(5) <= termination,
        "shutdown_grace_ms {grace_ms} + worker stop 5 s + preStop {pre_stop:?} exceed {termination:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    // This machine's share: one replica, whatever the pod gets.
    let mut server = Server::start(&[
        "--config",
        config_path.to_str().unwrap(),
        "--replicas",
        "1",
        "--tokenizers",
        "1",
        "--threads-per-replica",
        "2",
        "--max-batch-size",
        "32",
    ]);
    let worker_pids: Vec<u32> = server.workers().into_iter().map(|(pid, _)| pid).collect();
    assert_eq!(worker_pids.len(), 2, "one tokenizer and one model worker");
    let mut tasks = Vec::new();
    for r in 0..6 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let documents = (0..64)
                .map(|d| format!("document {d} of request {r} with some words in it"))
                .collect();
            client
                .rerank(RerankRequest {
                    query: "which request".into(),
                    documents,
                    ..Default::default()
                })
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = server.terminate(termination - pre_stop);
        drop(server);
        s
    })
    .await
    .unwrap();
    for t in tasks {
        let reply = t
            .await
            .unwrap()
            .expect("in-flight request completes during shutdown");
        assert_eq!(reply.into_inner().ranks.len(), 64);
    }
    assert!(status.success(), "exit status {status:?}");
    for pid in worker_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} outlived the supervisor"
        );
    }
}

#[test]
fn a_sigkilled_supervisor_takes_its_workers_with_it() {
    let mut server = Server::start(&["--replicas", "2", "--tokenizers", "2"]);
    let workers = server.workers();
    assert_eq!(workers.len(), 4, "{workers:?}");
    let mut child = server.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = std::time::Instant::now();
    // Gone = no longer running: a dead worker may linger as a zombie until
    // whoever adopted it (init, or a subreaper) reaps it.
    let running = |pid: &u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
            .unwrap_or(false)
    };
    while workers.iter().any(|(pid, _)| running(pid)) {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "workers outlived the supervisor by 1 s: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "all workers gone {:?} after the supervisor's SIGKILL",
        killed.elapsed()
    );
}
