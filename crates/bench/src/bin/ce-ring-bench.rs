//! `ce-ring-bench`: the shared-memory ring between two real processes
//! against a Unix-socket baseline and a single-thread `memcpy`, all
//! measured in the same run.
//!
//! ```text
//! scripts/bench_ring.sh            # builds, then runs this
//! ```
//!
//! Needs `ce-ring-peer` (built from `ce-common`) beside this executable.
//! Reports throughput at 64 KiB and 1 MiB frames, 64-byte round trips with
//! an awake and an asleep peer (p50/p99), and the CPU two idle processes
//! connected by rings use. `CE_IPC=portable` measures the portable IPC
//! backend (`scripts/bench_ring.sh` runs both, side by side).

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use ce_common::link::{self, LinkConfig, SupervisorLink};
use ce_common::ring::{FrameMeta, RingError};
use ce_common::ring_check::{self, REPORT_KIND};
use ce_common::spawn::{SpawnSpec, Spawned, spawn_now};
use clap::Parser;
use hdrhistogram::Histogram;
use serde::Serialize;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmark the shared-memory rings against a Unix socket and memcpy"
)]
struct Args {
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    round_trips: u64,
    /// Pause before each "asleep" round trip, in microseconds (long enough
    /// for the peer to stop spinning and sleep on its doorbell).
    #[arg(long, default_value_t = 2_000)]
    asleep_gap_us: u64,
    /// Idle measurement length in seconds.
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Capacity of each ring in MiB (the supervisor's default is 4).
    #[arg(long, default_value_t = 4)]
    ring_mib: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Throughput {
    frame_bytes: usize,
    memcpy_gbps: f64,
    ring_gbps: f64,
    socket_gbps: f64,
    ring_over_socket: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    transport: &'static str,
    peer: &'static str,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Idle {
    seconds: f64,
    supervisor_cpu_percent: f64,
    worker_cpu_percent: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    /// The IPC backend the rings, doorbells and peer watch used (`CE_IPC`).
    ipc_backend: &'static str,
    throughput: Vec<Throughput>,
    latency: Vec<Latency>,
    idle: Idle,
}

fn peer_program() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let peer = exe.with_file_name("ce-ring-peer");
    ensure!(
        peer.exists(),
        "{} not found: build it with `cargo build --release -p ce-common`",
        peer.display()
    );
    Ok(peer)
}

fn ring_peer(config: LinkConfig, mode: &str) -> anyhow::Result<(SupervisorLink, Spawned)> {
    let (sup, child) = link::create(config, "ce-ring-bench")?;
    let mut spec = SpawnSpec::new(peer_program()?).with_link(child);
    spec.args = vec![mode.into()];
    Ok((sup, spawn_now(spec)?))
}

fn socket_peer(mode: &str) -> anyhow::Result<(UnixStream, Spawned)> {
    let (ours, theirs) = UnixStream::pair()?;
    let mut spec = SpawnSpec::new(peer_program()?);
    spec.args = vec![mode.into()];
    spec.fds = vec![OwnedFd::from(theirs)];
    Ok((ours, spawn_now(spec)?))
}

/// Single-thread copy speed for buffers of `len` bytes (the bound a
/// copy-in/copy-out transport cannot beat).
fn memcpy_gbps(len: usize, seconds: f64) -> f64 {
    let src = vec![1u8; len];
    let mut dst = vec![0u8; len];
    let (mut bytes, started) = (0u64, Instant::now());
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..16 {
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&mut dst);
        }
        bytes += 16 * len as u64;
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

fn ring_gbps(config: LinkConfig, len: usize, seconds: f64) -> anyhow::Result<f64> {
    let (mut sup, mut child) = ring_peer(config, "drain")?;
    let peer = Some(child.exit.fd());
    let payload = vec![0xa5u8; len];
    let (mut bytes, started) = (0u64, Instant::now());
    let mut id = 0;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..8 {
            sup.to_worker.send(
                FrameMeta {
                    kind: 1,
                    id,
                    count: 0,
                    work_us: 0,
                },
                &payload,
                WAIT,
                peer,
            )?;
            id += 1;
        }
        bytes += 8 * len as u64;
    }
    ring_check::send_end(&mut sup.to_worker, 0, &[], WAIT, peer)?;
    let mut buf = Vec::new();
    let done = sup.from_worker.recv(&mut buf, WAIT, peer)?;
    ensure!(
        done.kind == REPORT_KIND,
        "unexpected reply kind {}",
        done.kind
    );
    // The peer has read every byte once it answers.
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(child.child.wait()?.success(), "ring peer failed");
    Ok(bytes as f64 / elapsed / 1e9)
}

fn socket_gbps(len: usize, seconds: f64) -> anyhow::Result<f64> {
    let (mut sock, mut child) = socket_peer("uds-sink")?;
    let payload = vec![0xa5u8; len];
    let (mut bytes, started) = (0u64, Instant::now());
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..8 {
            sock.write_all(&(len as u64).to_le_bytes())?;
            sock.write_all(&payload)?;
        }
        bytes += 8 * len as u64;
    }
    sock.write_all(&u64::MAX.to_le_bytes())?;
    let mut ack = [0u8; 1];
    sock.read_exact(&mut ack)?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(sock);
    ensure!(child.child.wait()?.success(), "socket peer failed");
    Ok(bytes as f64 / elapsed / 1e9)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

fn summarise(transport: &'static str, peer: &'static str, h: &Histogram<u64>) -> Latency {
    Latency {
        transport,
        peer,
        p50_us: h.value_at_quantile(0.50) as f64 / 1e3,
        p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
    }
}

fn ring_rtt(
    config: LinkConfig,
    round_trips: u64,
    gap: Option<Duration>,
) -> anyhow::Result<Histogram<u64>> {
    let (mut sup, mut child) = ring_peer(config, "echo")?;
    let peer = Some(child.exit.fd());
    let payload = [0x5au8; 64];
    let mut buf = Vec::new();
    let mut h = histogram();
    for id in 0..round_trips {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        sup.to_worker.send(
            FrameMeta {
                kind: 1,
                id,
                count: 0,
                work_us: 0,
            },
            &payload,
            WAIT,
            peer,
        )?;
        let back = sup.from_worker.recv(&mut buf, WAIT, peer)?;
        h.record(t.elapsed().as_nanos() as u64)?;
        ensure!(back.id == id && buf.len() == 64, "echo mismatch");
    }
    ring_check::send_end(&mut sup.to_worker, 0, &[], WAIT, peer)?;
    ensure!(child.child.wait()?.success(), "echo peer failed");
    Ok(h)
}

fn socket_rtt(round_trips: u64, gap: Option<Duration>) -> anyhow::Result<Histogram<u64>> {
    let (mut sock, mut child) = socket_peer("uds-echo")?;
    let mut frame = [0u8; 72];
    frame[..8].copy_from_slice(&64u64.to_le_bytes());
    let mut back = [0u8; 72];
    let mut h = histogram();
    for _ in 0..round_trips {
        if let Some(gap) = gap {
            std::thread::sleep(gap);
        }
        let t = Instant::now();
        sock.write_all(&frame)?;
        sock.read_exact(&mut back)?;
        h.record(t.elapsed().as_nanos() as u64)?;
    }
    drop(sock);
    ensure!(child.child.wait()?.success(), "socket echo peer failed");
    Ok(h)
}

fn cpu_seconds(stat_path: &str) -> anyhow::Result<f64> {
    Ok(ce_common::procstat::cpu_time(stat_path)
        .with_context(|| format!("reading {stat_path}"))?
        .as_secs_f64())
}

fn idle_cost(config: LinkConfig, seconds: f64) -> anyhow::Result<Idle> {
    let (mut sup, mut child) = ring_peer(config, "echo")?;
    let peer = Some(child.exit.fd());
    let mut buf = Vec::new();
    sup.to_worker.send(
        FrameMeta {
            kind: 1,
            id: 0,
            count: 0,
            work_us: 0,
        },
        b"up?",
        WAIT,
        peer,
    )?;
    sup.from_worker.recv(&mut buf, WAIT, peer)?;
    let child_stat = format!("/proc/{}/stat", child.pid());
    let (child0, self0) = (cpu_seconds(&child_stat)?, cpu_seconds("/proc/self/stat")?);
    // The supervisor side waits on the ring exactly as it would when idle.
    match sup
        .from_worker
        .recv(&mut buf, Duration::from_secs_f64(seconds), peer)
    {
        Err(RingError::Timeout) => {}
        other => bail!("idle wait ended with {other:?}"),
    }
    let (child1, self1) = (cpu_seconds(&child_stat)?, cpu_seconds("/proc/self/stat")?);
    ring_check::send_end(&mut sup.to_worker, 0, &[], WAIT, peer)?;
    ensure!(child.child.wait()?.success(), "echo peer failed");
    Ok(Idle {
        seconds,
        supervisor_cpu_percent: (self1 - self0) / seconds * 100.0,
        worker_cpu_percent: (child1 - child0) / seconds * 100.0,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ce_common::ipc::Backend::from_env()?;
    let config = LinkConfig {
        to_worker: args.ring_mib << 20,
        from_worker: args.ring_mib << 20,
    };
    let mut throughput = Vec::new();
    for len in [64 << 10, 1 << 20] {
        let memcpy = memcpy_gbps(len, args.seconds);
        let ring = ring_gbps(config, len, args.seconds)?;
        let socket = socket_gbps(len, args.seconds)?;
        throughput.push(Throughput {
            frame_bytes: len,
            memcpy_gbps: memcpy,
            ring_gbps: ring,
            socket_gbps: socket,
            ring_over_socket: ring / socket,
        });
    }
    let gap = Duration::from_micros(args.asleep_gap_us);
    let latency = vec![
        summarise("ring", "awake", &ring_rtt(config, args.round_trips, None)?),
        summarise("socket", "awake", &socket_rtt(args.round_trips, None)?),
        summarise(
            "ring",
            "asleep",
            &ring_rtt(config, args.round_trips / 10, Some(gap))?,
        ),
        summarise(
            "socket",
            "asleep",
            &socket_rtt(args.round_trips / 10, Some(gap))?,
        ),
    ];
    let idle = idle_cost(config, args.idle_seconds)?;
    let report = Report {
        ipc_backend: ce_common::ipc::Backend::current().as_str(),
        throughput,
        latency,
        idle,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_report(r: &Report) {
    println!(
        "IPC backend: {} (CE_IPC)\n\n## Throughput (one producer process → one consumer process)\n",
        r.ipc_backend
    );
    println!("| frame | memcpy GB/s | ring GB/s | Unix socket GB/s | ring / socket |");
    println!("|---|---|---|---|---|");
    for t in &r.throughput {
        println!(
            "| {} KiB | {:.2} | {:.2} | {:.2} | {:.2}× |",
            t.frame_bytes >> 10,
            t.memcpy_gbps,
            t.ring_gbps,
            t.socket_gbps,
            t.ring_over_socket
        );
    }
    println!("\n## 64-byte round trip\n");
    println!("| transport | peer | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    for l in &r.latency {
        println!(
            "| {} | {} | {:.1} | {:.1} |",
            l.transport, l.peer, l.p50_us, l.p99_us
        );
    }
    println!("\n## Idle for {:.0} s\n", r.idle.seconds);
    println!(
        "supervisor process: {:.3}% of a core, worker process: {:.3}% of a core",
        r.idle.supervisor_cpu_percent, r.idle.worker_cpu_percent
    );
    let at_64k = r
        .throughput
        .first()
        .map(|t| t.ring_over_socket)
        .unwrap_or(0.0);
    let asleep = r
        .latency
        .iter()
        .find(|l| l.transport == "ring" && l.peer == "asleep")
        .map(|l| l.p50_us)
        .unwrap_or(f64::MAX);
    println!("\n## Targets\n");
    println!(
        "- ring ≥ 3× socket at 64 KiB: {:.2}× {}",
        at_64k,
        verdict(at_64k >= 3.0)
    );
    println!(
        "- asleep round trip p50 ≤ 100 µs: {asleep:.1} µs {}",
        verdict(asleep <= 100.0)
    );
    let idle = r.idle.supervisor_cpu_percent + r.idle.worker_cpu_percent;
    println!(
        "- idle CPU < 0.5% of a core: {idle:.3}% {}",
        verdict(idle < 0.5)
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "(met)" } else { "(MISSED)" }
}
