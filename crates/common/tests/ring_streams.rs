//! Two real processes stream checksummed frames of 1 B … 1 MiB through a
//! ring, in both directions, with many wrap-arounds and a full ring.
//!
//! `CE_RING_FRAMES` sets the frames per direction (default 200 000, a few
//! seconds; the acceptance run used 10 000 000).

mod support;

use std::time::{Duration, Instant};

use ce_common::link::LinkConfig;
use ce_common::ring_check::{self, END_KIND, REPORT_KIND};
use support::{WAIT, env_or, peer};

/// Small rings so that 1 MiB frames wrap constantly and fill them.
const SMALL: LinkConfig = LinkConfig {
    to_worker: 4 << 20,
    from_worker: 4 << 20,
};

#[test]
fn parent_to_child_stream_arrives_intact() {
    let frames = env_or("CE_RING_FRAMES", 200_000);
    let seed = 0x5eed_0001;
    // The sink starts 300 ms late: the ring fills and we must block, then resume.
    let (mut sup, mut child) = peer(SMALL, &["sink", &seed.to_string(), "300"]);
    let peer_fd = Some(child.exit.fd());
    let started = Instant::now();
    let bytes =
        ring_check::send_stream(&mut sup.to_worker, seed, 0..frames, WAIT, peer_fd).unwrap();
    ring_check::send_end(&mut sup.to_worker, frames, &[], WAIT, peer_fd).unwrap();
    let mut buf = Vec::new();
    let report = sup.from_worker.recv(&mut buf, WAIT, peer_fd).unwrap();
    let elapsed = started.elapsed();
    assert_eq!(report.kind, REPORT_KIND);
    assert_eq!(report.id, 0, "the child found corrupt frames");
    assert_eq!(
        u64::from_le_bytes(buf[..8].try_into().unwrap()),
        frames,
        "frames seen by the child"
    );
    let full = sup.to_worker.full_waits();
    assert!(full > 0, "the late consumer never filled the ring");
    assert!(child.child.wait().unwrap().success());
    eprintln!(
        "parent → child: {frames} frames, {:.2} GB in {elapsed:.2?} ({:.2} GB/s), {} wraps at least, {full} full-ring waits",
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / elapsed.as_secs_f64(),
        bytes / SMALL.to_worker as u64,
    );
}

#[test]
fn child_to_parent_stream_arrives_intact() {
    let frames = env_or("CE_RING_FRAMES", 200_000);
    let seed = 0x5eed_0002;
    let (mut sup, mut child) = peer(SMALL, &["source", &seed.to_string(), &frames.to_string()]);
    let peer_fd = Some(child.exit.fd());
    // Let the child run into a full ring before we start reading.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut bytes = 0u64;
    let mut i = 0u64;
    let child_full_waits = loop {
        let h = sup.from_worker.recv(&mut buf, WAIT, peer_fd).unwrap();
        if h.kind == END_KIND {
            assert_eq!(h.count as u64, frames as u32 as u64);
            break u64::from_le_bytes(buf[..8].try_into().unwrap());
        }
        assert_eq!(h.id, i, "frames out of order");
        assert!(
            ring_check::verify(seed, i, &buf),
            "frame {i} is corrupt ({} bytes)",
            buf.len()
        );
        bytes += buf.len() as u64;
        i += 1;
    };
    let elapsed = started.elapsed();
    assert_eq!(i, frames);
    assert!(child_full_waits > 0, "the child never met a full ring");
    assert!(child.child.wait().unwrap().success());
    eprintln!(
        "child → parent: {frames} frames, {:.2} GB in {elapsed:.2?} ({:.2} GB/s), {child_full_waits} full-ring waits in the child",
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / elapsed.as_secs_f64(),
    );
}
