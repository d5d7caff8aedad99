//! `ce-ring-peer MODE [ARGS]`: the far end of a ring for the cross-process
//! tests and `ce-ring-bench`. It inherits a link (fds 3–7, `CE_LINK`) or,
//! in the `uds-*` modes, a Unix socket on fd 3.
//!
//! Modes: `sink SEED [DELAY_MS]` (verify a checked stream, report),
//! `source SEED N` (send a checked stream, `N` = 0 for endless; the end
//! frame carries the producer's full-ring waits), `drain` (consume in place
//! without checking), `echo` (send every frame back), `uds-sink`, `uds-echo`.
//! Every wait watches the parent's pidfd: the peer exits when it dies.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ce_common::link::WorkerLink;
use ce_common::ring::{FrameMeta, RingError};
use ce_common::ring_check::{self, END_KIND, REPORT_KIND};

const WAIT: Duration = Duration::from_secs(3600);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ce-ring-peer: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn arg(args: &[String], i: usize) -> Result<u64, String> {
    args.get(i)
        .ok_or(format!("missing argument {i}"))?
        .parse()
        .map_err(|e| format!("argument {i}: {e}"))
}

fn run(args: &[String]) -> Result<(), String> {
    let parent = ce_common::spawn::watch_parent(None).map_err(|e| e.to_string())?;
    let mode = args.first().map(String::as_str).unwrap_or("");
    if let Some(uds_mode) = mode.strip_prefix("uds-") {
        // SAFETY: fd 3 is the socket our parent placed for us; nothing else owns it.
        let sock = unsafe { std::os::unix::net::UnixStream::from(OwnedFd::from_raw_fd(3)) };
        return uds(uds_mode, sock);
    }
    // SAFETY: fds 3–7 are the link our parent placed for us; we take them once.
    let mut link = unsafe { WorkerLink::from_inherited() }.map_err(|e| e.to_string())?;
    let peer = Some(parent.as_fd());
    let mut buf = Vec::new();
    let e = |e: RingError| e.to_string();
    match mode {
        "sink" => {
            let seed = arg(args, 1)?;
            // An optional head start for the producer: it fills the ring and
            // must block until we begin.
            if args.len() > 2 {
                std::thread::sleep(Duration::from_millis(arg(args, 2)?));
            }
            let (mut seen, mut bad) = (0u64, 0u64);
            loop {
                let h = link.to_worker.recv(&mut buf, WAIT, peer).map_err(e)?;
                if h.kind == END_KIND {
                    break;
                }
                if h.id != seen || !ring_check::verify(seed, h.id, &buf) {
                    bad += 1;
                }
                seen += 1;
            }
            let report = FrameMeta {
                kind: REPORT_KIND,
                id: bad,
                count: seen as u32,
                work_us: 0,
            };
            link.from_worker
                .send(report, &seen.to_le_bytes(), WAIT, peer)
                .map_err(e)
        }
        "source" => {
            let (seed, n) = (arg(args, 1)?, arg(args, 2)?);
            let ids = 0..if n == 0 { u64::MAX } else { n };
            ring_check::send_stream(&mut link.from_worker, seed, ids, WAIT, peer).map_err(e)?;
            let full_waits = link.from_worker.full_waits().to_le_bytes();
            ring_check::send_end(&mut link.from_worker, n, &full_waits, WAIT, peer).map_err(e)
        }
        "drain" => {
            // Reads every cache line of every payload where it lies, as a
            // worker decoding in place does; the sum keeps the reads alive.
            let mut sum = 0u64;
            loop {
                let (h, touched) = link
                    .to_worker
                    .recv_with(WAIT, peer, |_, bytes| {
                        bytes
                            .iter()
                            .step_by(64)
                            .fold(0u64, |a, &b| a.wrapping_add(b as u64))
                    })
                    .map_err(e)?;
                sum = sum.wrapping_add(touched);
                if h.kind == END_KIND {
                    let done = FrameMeta {
                        kind: REPORT_KIND,
                        id: 0,
                        count: 0,
                        work_us: 0,
                    };
                    return link
                        .from_worker
                        .send(done, &sum.to_le_bytes(), WAIT, peer)
                        .map_err(e);
                }
            }
        }
        "echo" => loop {
            let h = link.to_worker.recv(&mut buf, WAIT, peer).map_err(e)?;
            if h.kind == END_KIND {
                return Ok(());
            }
            let meta = FrameMeta {
                kind: h.kind,
                id: h.id,
                count: h.count,
                work_us: 0,
            };
            link.from_worker.send(meta, &buf, WAIT, peer).map_err(e)?;
        },
        other => Err(format!("unknown mode {other:?}")),
    }
}

/// Unix-socket baselines: 8-byte length prefix, then the payload.
fn uds(mode: &str, mut sock: std::os::unix::net::UnixStream) -> Result<(), String> {
    let mut len = [0u8; 8];
    let mut buf = Vec::new();
    loop {
        if sock.read_exact(&mut len).is_err() {
            return Ok(());
        }
        let n = u64::from_le_bytes(len) as usize;
        if n == u64::MAX as usize {
            return sock.write_all(&[1]).map_err(|e| e.to_string());
        }
        buf.resize(n, 0);
        sock.read_exact(&mut buf).map_err(|e| e.to_string())?;
        if mode == "echo" {
            sock.write_all(&len)
                .and_then(|_| sock.write_all(&buf))
                .map_err(|e| e.to_string())?;
        }
    }
}
