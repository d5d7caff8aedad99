//! Chaos: a steady load at concurrency 8 while a random worker (model or
//! tokenizer) is SIGKILLed every few seconds and one is SIGSTOPped (and
//! never continued): no request may fail, every score must equal the bare
//! engine's, and every kill must show as a restart — or, for a victim
//! killed while it was still starting, as a failed start that is retried.
//!
//! `CE_CHAOS_SECONDS` (default 20, as CI runs it) sets the length and
//! `CE_CHAOS_SEED` the victims; `scripts/chaos.sh 60` runs the full minute
//! on a release build.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ce_proto::v1::cross_encoder_client::CrossEncoderClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::{Pid, Signal, kill_process};
use support::{Server, engine_logits, score_request};
use tonic::transport::Channel;

const CONCURRENCY: usize = 8;
const KILL_EVERY: Duration = Duration::from_secs(5);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one client saw.
#[derive(Debug, Default)]
struct ClientLog {
    answered: usize,
    failures: Vec<String>,
    slowest: Duration,
}

type Requests = Arc<Vec<(String, Vec<String>)>>;

/// Requests of 16 documents each, and their reference scores.
fn chaos_requests() -> (Requests, Arc<Vec<Vec<f32>>>) {
    let requests: Vec<(String, Vec<String>)> = (0..8)
        .map(|r| {
            let query = format!("chaos query {r} about rivers and mountains");
            let documents = (0..16)
                .map(|d| {
                    format!(
                        "document {d} of request {r}: {}",
                        "the river runs past the mountain ".repeat(1 + (d * 7 + r) % 9)
                    )
                })
                .collect();
            (query, documents)
        })
        .collect();
    let flat: Vec<(String, String)> = requests
        .iter()
        .flat_map(|(q, ds)| ds.iter().map(move |d| (q.clone(), d.clone())))
        .collect();
    let reference: Vec<Vec<f32>> = engine_logits(&flat)
        .chunks(16)
        .map(<[f32]>::to_vec)
        .collect();
    (Arc::new(requests), Arc::new(reference))
}

/// Client `c`: its share of the requests, one at a time until `stop`,
/// each answer checked against the engine's.
async fn client_loop(
    c: usize,
    mut client: CrossEncoderClient<Channel>,
    requests: Requests,
    reference: Arc<Vec<Vec<f32>>>,
    stop: Arc<AtomicBool>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut i = c;
    while !stop.load(Ordering::Relaxed) {
        let (query, documents) = &requests[i % requests.len()];
        let request = score_request(query, documents);
        let sent = Instant::now();
        match client.score(request).await {
            Ok(reply) => {
                let scores = reply.into_inner().scores;
                let want = &reference[i % requests.len()];
                let worst = scores
                    .iter()
                    .zip(want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                if scores.len() != want.len() || worst > 1e-4 {
                    log.failures
                        .push(format!("request {i}: scores off by {worst}: {scores:?}"));
                }
                log.answered += 1;
            }
            Err(status) => log.failures.push(format!("request {i}: {status:?}")),
        }
        log.slowest = log.slowest.max(sent.elapsed());
        i += CONCURRENCY;
    }
    log
}

/// The chaos: a SIGKILL every KILL_EVERY, one SIGSTOP half-way. Returns
/// the names of the killed workers and the stopped one.
async fn unleash(server: &Server, seconds: u64, rng: &mut StdRng) -> (Vec<String>, (u32, String)) {
    let started = Instant::now();
    let (mut killed, mut stopped) = (Vec::new(), None);
    let mut next_kill = started + KILL_EVERY;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stopped.is_none() && started.elapsed() >= Duration::from_secs(seconds / 2) {
            let workers = server.workers();
            let (pid, name) = workers[rng.random_range(0..workers.len())].clone();
            kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::STOP).unwrap();
            eprintln!("{:>5.1?}: SIGSTOP {name} {pid}", started.elapsed());
            stopped = Some((pid, name));
        }
        if Instant::now() >= next_kill {
            next_kill += KILL_EVERY;
            let workers: Vec<_> = server
                .workers()
                .into_iter()
                .filter(|(pid, _)| stopped.as_ref().is_none_or(|(s, _)| s != pid))
                .collect();
            let (pid, name) = workers[rng.random_range(0..workers.len())].clone();
            if kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).is_ok() {
                eprintln!("{:>5.1?}: SIGKILL {name} {pid}", started.elapsed());
                killed.push(name);
            }
        }
    }
    (killed, stopped.expect("a worker was stopped"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_workers_are_killed_and_stopped() {
    let seconds = env_u64("CE_CHAOS_SECONDS", 20);
    let seed = env_u64("CE_CHAOS_SEED", rand::rng().random());
    eprintln!("chaos: {seconds} s, seed {seed} (CE_CHAOS_SEED reproduces the victims)");
    let mut rng = StdRng::seed_from_u64(seed);

    let (requests, reference) = chaos_requests();

    let server = Server::start(&[
        "--replicas",
        "2",
        "--tokenizers",
        "2",
        "--max-batch-size",
        "32",
        "--tokenize-chunk",
        "8",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..CONCURRENCY {
        let (client, stop) = (server.client().await, stop.clone());
        let (requests, reference) = (requests.clone(), reference.clone());
        clients.push(tokio::spawn(client_loop(
            c, client, requests, reference, stop,
        )));
    }

    let (killed, (stopped_pid, stopped_name)) = unleash(&server, seconds, &mut rng).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = ClientLog::default();
    for c in clients {
        let log = c.await.expect("client task");
        total.answered += log.answered;
        total.failures.extend(log.failures);
        total.slowest = total.slowest.max(log.slowest);
    }

    // The stopped worker must have been found hung and replaced too.
    let replaced_by = Instant::now() + Duration::from_secs(15);
    while server.workers().iter().any(|(p, _)| *p == stopped_pid) {
        assert!(
            Instant::now() < replaced_by,
            "the SIGSTOPped {stopped_name} {stopped_pid} was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A victim killed before it was ready is one start of its slot failing
    // (the slot tries again), not a replacement of its own.
    let restarts = |role: &str| {
        let count = |metric: &str| {
            support::metric(server.http_port, &format!("{metric}{{role=\"{role}\"}}")).max(0.0)
                as usize
        };
        count("worker_restarts_total") + count("worker_start_failures_total")
    };
    let killed_models = killed.iter().filter(|n| *n == "ce-model-worker").count();
    let killed_tokenizers = killed.len() - killed_models;
    let (stopped_model, stopped_tokenizer) = (
        (stopped_name == "ce-model-worker") as usize,
        (stopped_name != "ce-model-worker") as usize,
    );
    // Replacements start after a back-off: give the last ones time.
    let settled_by = Instant::now() + Duration::from_secs(15);
    let (mut model_restarts, mut tokenizer_restarts) = (0, 0);
    while Instant::now() < settled_by {
        (model_restarts, tokenizer_restarts) = (restarts("model"), restarts("tokenizer"));
        if model_restarts >= killed_models + stopped_model
            && tokenizer_restarts >= killed_tokenizers + stopped_tokenizer
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "chaos over {seconds} s: {} requests answered ({} pairs), {} failed, slowest {:.2?}; \
         SIGKILLed {killed_models} model + {killed_tokenizers} tokenizer workers, SIGSTOPped a {stopped_name}; \
         restarts and failed starts: {model_restarts} model, {tokenizer_restarts} tokenizer",
        total.answered,
        total.answered * 16,
        total.failures.len(),
        total.slowest,
    );
    assert!(
        total.failures.is_empty(),
        "{} requests failed: {:#?}",
        total.failures.len(),
        total.failures
    );
    assert!(total.answered >= CONCURRENCY, "the load made no progress");
    assert!(!killed.is_empty(), "no worker was killed");
    assert!(
        model_restarts >= killed_models + stopped_model
            && tokenizer_restarts >= killed_tokenizers + stopped_tokenizer,
        "restarts and failed starts ({model_restarts} model, {tokenizer_restarts} tokenizer) miss kills \
         ({killed_models} + {stopped_model} model, {killed_tokenizers} + {stopped_tokenizer} tokenizer)"
    );
}
