//! Peer death, clean-up and idle cost with real processes and real signals.
//! One test function, so that no other test opens or closes fds while it
//! compares `/proc/self/fd` before and after.

mod support;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use ce_common::link::LinkConfig;
use ce_common::ring::{FrameMeta, RingError};
use ce_common::ring_check::{self, REPORT_KIND};
use rustix::process::{Pid, Signal, kill_process};
use support::{WAIT, cpu_time, peer};

const CONFIG: LinkConfig = LinkConfig {
    to_worker: 4 << 20,
    from_worker: 4 << 20,
};
const DEATH_NOTICED_WITHIN: Duration = Duration::from_millis(500);

fn open_fds() -> BTreeMap<String, String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            ))
        })
        .collect()
}

fn dev_shm() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn sigkill(pid: u32) -> Instant {
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
    Instant::now()
}

/// The consumer survives its producer: frames written before the kill all
/// arrive intact, then `PeerGone`, within 500 ms of the signal.
fn killed_producer_is_noticed() -> Duration {
    let seed = 11;
    let (mut sup, mut child) = peer(CONFIG, &["source", &seed.to_string(), "0"]);
    let mut buf = Vec::new();
    for i in 0..2_000 {
        let h = sup
            .from_worker
            .recv(&mut buf, WAIT, Some(child.exit.fd()))
            .unwrap();
        assert!(h.id == i && ring_check::verify(seed, i, &buf));
    }
    let killed_at = sigkill(child.pid());
    let mut next = 2_000;
    let gone_at = loop {
        match sup.from_worker.recv(&mut buf, WAIT, Some(child.exit.fd())) {
            Ok(h) => {
                assert!(
                    h.id == next && ring_check::verify(seed, next, &buf),
                    "frame {next} corrupt after the kill"
                );
                next += 1;
            }
            Err(RingError::PeerGone) => break Instant::now(),
            Err(e) => panic!("unexpected {e}"),
        }
    };
    assert_eq!(child.child.wait().unwrap().signal(), Some(9));
    gone_at - killed_at
}

/// The producer survives its consumer: blocked on a full ring, it gets
/// `PeerGone` within 500 ms of the signal.
fn killed_consumer_is_noticed() -> Duration {
    // The sink sleeps for an hour before reading: the ring fills and stays full.
    let (mut sup, mut child) = peer(CONFIG, &["sink", "12", "3600000"]);
    let pid = child.pid();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        sigkill(pid)
    });
    let payload = vec![7u8; 4096];
    let mut sent = 0u64;
    let gone_at = loop {
        match sup.to_worker.send(
            FrameMeta {
                kind: 1,
                id: sent,
                count: 0,
                work_us: 0,
            },
            &payload,
            WAIT,
            Some(child.exit.fd()),
        ) {
            Ok(()) => sent += 1,
            Err(RingError::PeerGone) => break Instant::now(),
            Err(e) => panic!("unexpected {e}"),
        }
    };
    let killed_at = killer.join().unwrap();
    assert!(sup.to_worker.full_waits() > 0, "the producer never blocked");
    assert!(sent > 100, "only {sent} frames fit before the kill");
    assert_eq!(child.child.wait().unwrap().signal(), Some(9));
    gone_at.saturating_duration_since(killed_at)
}

/// A fresh worker on a fresh mapping after the kills works normally.
fn fresh_link_works() {
    let seed = 13;
    let (mut sup, mut child) = peer(CONFIG, &["sink", &seed.to_string()]);
    let peer_fd = Some(child.exit.fd());
    let mut buf = Vec::new();
    ring_check::send_stream(&mut sup.to_worker, seed, 0..5_000, WAIT, peer_fd).unwrap();
    ring_check::send_end(&mut sup.to_worker, 5_000, &[], WAIT, peer_fd).unwrap();
    let report = sup.from_worker.recv(&mut buf, WAIT, peer_fd).unwrap();
    assert_eq!(
        (report.kind, report.id, report.count),
        (REPORT_KIND, 0, 5_000)
    );
    assert!(child.child.wait().unwrap().success());
}

/// Two processes idle on a link cost (almost) no CPU: nobody spins.
fn idle_link_costs_nothing() {
    let (mut sup, mut child) = peer(CONFIG, &["echo"]);
    let peer_fd = Some(child.exit.fd());
    let mut buf = Vec::new();
    sup.to_worker
        .send(
            FrameMeta {
                kind: 1,
                id: 1,
                count: 0,
                work_us: 0,
            },
            b"ping",
            WAIT,
            peer_fd,
        )
        .unwrap();
    sup.from_worker.recv(&mut buf, WAIT, peer_fd).unwrap();
    let child_stat = format!("/proc/{}/stat", child.pid());
    let (child_before, self_before) = (cpu_time(&child_stat), cpu_time("/proc/thread-self/stat"));
    let idle = Duration::from_secs(3);
    assert!(matches!(
        sup.from_worker.recv(&mut buf, idle, peer_fd),
        Err(RingError::Timeout)
    ));
    let child_used = cpu_time(&child_stat) - child_before;
    let self_used = cpu_time("/proc/thread-self/stat") - self_before;
    eprintln!("idle {idle:?}: child used {child_used:?}, supervisor thread used {self_used:?}");
    // One clock tick (10 ms) of slack each: 1% of a core over 3 s is 30 ms.
    assert!(
        child_used <= Duration::from_millis(30),
        "idle child used {child_used:?}"
    );
    assert!(
        self_used <= Duration::from_millis(30),
        "idle waiter used {self_used:?}"
    );
    ring_check::send_end(&mut sup.to_worker, 0, &[], WAIT, peer_fd).unwrap();
    assert!(child.child.wait().unwrap().success());
}

#[test]
fn peers_die_cleanly_and_idle_links_sleep() {
    // The portable backend's supervisor lifeline (two fds) is made on the
    // first spawn and kept for the process's life: make it before counting.
    let mut first = ce_common::spawn::spawn_now(ce_common::spawn::SpawnSpec::new("/bin/true"))
        .expect("/bin/true starts");
    first.child.wait().unwrap();
    drop(first);
    let fds_before = open_fds();
    let shm_before = dev_shm();

    let producer_gone = killed_producer_is_noticed();
    eprintln!("SIGKILLed producer noticed after {producer_gone:?}");
    assert!(
        producer_gone < DEATH_NOTICED_WITHIN,
        "producer death noticed after {producer_gone:?}"
    );

    let consumer_gone = killed_consumer_is_noticed();
    eprintln!("SIGKILLed consumer noticed after {consumer_gone:?}");
    assert!(
        consumer_gone < DEATH_NOTICED_WITHIN,
        "consumer death noticed after {consumer_gone:?}"
    );

    fresh_link_works();
    idle_link_costs_nothing();

    assert_eq!(open_fds(), fds_before, "fds leaked");
    assert_eq!(dev_shm(), shm_before, "/dev/shm changed");
}
