//! `/metrics` against a real Prometheus (Debian's package; `scripts/test.sh`
//! installs it through `scripts/install_prometheus.sh`): the shipped
//! config passes `promtool`, every PromQL expression of the shipped
//! Grafana dashboard returns data after a few scrapes of a loaded server,
//! and killed workers show in `worker_restarts_total`. The dashboard's
//! structure is checked without Prometheus.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use support::{Server, http, score_request, workspace_root};

fn dashboard() -> Value {
    let path = workspace_root().join("conf/grafana/dashboards/ce-supervisor.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every PromQL expression of the dashboard, with its panel's title.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "ce-supervisor");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let panels = d["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "{} panels", panels.len());
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id in {title}"
        );
        assert_eq!(p["datasource"]["uid"], "prometheus", "{title}");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
        assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{title}: {g}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            assert!(
                !t["expr"].as_str().unwrap_or_default().is_empty(),
                "{title}"
            );
            assert!(t["refId"].is_string(), "{title}");
        }
    }
    // What the issue asks the dashboard to show, by metric.
    let all: String = dashboard_queries(&d)
        .into_iter()
        .map(|(_, e)| e)
        .collect::<Vec<_>>()
        .join("\n");
    for metric in [
        "inference_pairs_total",
        "inference_request_duration_seconds_bucket",
        "inference_queue_size",
        "inference_batches_in_flight",
        "inference_queue_wait_time_seconds_bucket",
        "inference_batch_size_sum",
        "inference_batch_tokens_sum",
        "inference_padding_ratio_sum",
        "worker_busy_seconds_total",
        "process_cpu_percent",
        "process_resident_memory_bytes",
        "worker_restarts_total",
        "worker_start_failures_total",
        "inference_requests_total{status!=\"ok\"}",
        "inference_stage_duration_seconds_bucket",
    ] {
        assert!(all.contains(metric), "no panel uses {metric}");
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus on loopback, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Runs the shipped config, pointed at `target` and scraping every second.
    fn start(target: &str) -> Self {
        let shipped =
            std::fs::read_to_string(workspace_root().join("conf/prometheus/prometheus.yml"))
                .unwrap();
        assert!(shipped.contains("host.docker.internal:8000"));
        let config = shipped
            .replace("host.docker.internal:8000", target)
            .replace("scrape_interval: 5s", "scrape_interval: 1s");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is not installed: run scripts/install_prometheus.sh");
        let until = Instant::now() + Duration::from_secs(30);
        while !matches!(http(port, "GET", "/-/ready", None), Ok((200, _))) {
            assert!(Instant::now() < until, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        let prometheus = Self {
            child,
            port,
            _dir: dir,
        };
        // Targets reach the scrape loop a few seconds after start.
        while prometheus.query("up == 1").is_empty() {
            assert!(Instant::now() < until, "prometheus never scraped {target}");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// An instant query's result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let (status, body) = http(self.port, "GET", &path, None).unwrap();
        assert_eq!(status, 200, "{expr}: {body}");
        let reply: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(reply["status"], "success", "{expr}: {body}");
        reply["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_dashboard_query_and_sees_restarts() {
    let status = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(workspace_root().join("conf/prometheus/prometheus.yml"))
        .output()
        .expect("promtool is not installed: run scripts/install_prometheus.sh");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let server = Server::start(&["--replicas", "2", "--tokenizers", "1"]);
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", server.http_port));

    // A steady load for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..3 {
        let (mut client, stop) = (server.client().await, stop.clone());
        load.push(tokio::spawn(async move {
            let documents: Vec<String> = (0..24)
                .map(|d| format!("document {d} of client {c} about observability"))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                client
                    .score(score_request("metrics", &documents))
                    .await
                    .expect("load request");
            }
        }));
    }
    // One error, so the errors panel has a series.
    let mut client = server.client().await;
    let empty = ce_proto::v1::RerankRequest {
        query: "q".into(),
        ..Default::default()
    };
    assert!(client.rerank(empty).await.is_err());

    // Scrapes stay fast under load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let port = server.http_port;
    let mut scrapes: Vec<Duration> = tokio::task::spawn_blocking(move || {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                let (status, _) = http(port, "GET", "/metrics", None).unwrap();
                assert_eq!(status, 200);
                t.elapsed()
            })
            .collect()
    })
    .await
    .unwrap();
    scrapes.sort();
    eprintln!(
        "/metrics under load: p50 {:?}, max {:?}",
        scrapes[10], scrapes[19]
    );
    assert!(scrapes[10] < Duration::from_millis(50), "{scrapes:?}");

    // Kill one worker of each role; they come back.
    for name in ["ce-model-worker", "ce-tokenizer-wo"] {
        let (pid, _) = server
            .workers()
            .into_iter()
            .find(|(_, n)| n == name)
            .unwrap();
        kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(8)).await;

    let restarts: f64 = prometheus
        .query("sum(worker_restarts_total)")
        .first()
        .and_then(|r| r["value"][1].as_str()?.parse().ok())
        .unwrap_or(0.0);
    assert!(restarts >= 2.0, "Prometheus saw {restarts} restarts");
    // A restarted worker is a new series (new pid): no counter resets.
    for counter in [
        "worker_cpu_seconds_total",
        "worker_jobs_total",
        "worker_pairs_total",
    ] {
        for series in prometheus.query(&format!("resets({counter}[5m])")) {
            assert_eq!(
                series["value"][1], "0",
                "{counter} went backwards: {series}"
            );
        }
    }
    let pids =
        prometheus.query("count by (role, replica) (count_over_time(worker_jobs_total[5m]))");
    assert!(
        pids.iter().any(|s| s["value"][1] != "1"),
        "restarted workers should show as series of their own: {pids:?}"
    );
    let mut empty = Vec::new();
    for (title, expr) in dashboard_queries(&dashboard()) {
        if prometheus.query(&expr).is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}
