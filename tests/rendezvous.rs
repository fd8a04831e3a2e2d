//! The unique-id rendezvous over TCP and files, and torchrun's launch environment.

use ltrain::dist::rendezvous::{share_id, LaunchEnv, Rendezvous, MAX_ID_LEN};
use ltrain::dist::World;
use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// A port nothing listens on right now (the kernel's pick for an ephemeral bind, released).
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn local(port: u16) -> Rendezvous {
    Rendezvous::Tcp {
        host: "127.0.0.1".into(),
        port,
    }
}

/// 128 bytes like an NCCL id, not all alike.
fn an_id() -> Vec<u8> {
    (0..128u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn world(rank: usize, size: usize) -> World {
    World { rank, size }
}

/// Runs `size` ranks as threads (rank 0 after `master_delay`), each result in rank order.
fn run_ranks(
    rv: &Rendezvous,
    size: usize,
    id: &[u8],
    master_delay: Duration,
) -> Vec<anyhow::Result<Vec<u8>>> {
    let handles: Vec<_> = (0..size)
        .map(|rank| {
            let rv = rv.clone();
            let id = id.to_vec();
            thread::spawn(move || {
                if rank == 0 {
                    thread::sleep(master_delay);
                    share_id(&rv, world(0, size), Some(&id), Duration::from_secs(5))
                } else {
                    share_id(&rv, world(rank, size), None, Duration::from_secs(5))
                }
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn tcp_three_ranks_share_the_id() {
    let id = an_id();
    let rv = local(free_port());
    for got in run_ranks(&rv, 3, &id, Duration::ZERO) {
        assert_eq!(got.unwrap(), id);
    }
}

#[test]
fn tcp_peers_started_before_the_master_retry() {
    let id = an_id();
    let rv = local(free_port());
    for got in run_ranks(&rv, 3, &id, Duration::from_millis(400)) {
        assert_eq!(got.unwrap(), id);
    }
}

#[test]
fn tcp_any_id_length_up_to_the_limit() {
    let id: Vec<u8> = (0..MAX_ID_LEN).map(|i| (i % 251) as u8).collect();
    let rv = local(free_port());
    for got in run_ranks(&rv, 2, &id, Duration::ZERO) {
        assert_eq!(got.unwrap(), id);
    }
    let too_long = vec![0u8; MAX_ID_LEN + 1];
    let err = share_id(&rv, world(0, 2), Some(&too_long), Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
}

#[test]
fn a_world_of_one_needs_nobody() {
    let id = an_id();
    // Nothing listens, nothing is written: a single rank returns its id at once.
    let got = share_id(&local(1), world(0, 1), Some(&id), Duration::ZERO).unwrap();
    assert_eq!(got, id);
}

#[test]
fn file_three_ranks_share_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rendezvous::File(dir.path().join("nccl-id"));
    let id = an_id();
    for got in run_ranks(&rv, 3, &id, Duration::from_millis(300)) {
        assert_eq!(got.unwrap(), id);
    }
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("nccl-id")]);
}

#[test]
fn file_master_replaces_an_old_file_and_peers_check_the_world_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id");
    std::fs::write(&path, b"old contents").unwrap();
    let rv = Rendezvous::File(path.clone());
    let id = an_id();
    share_id(&rv, world(0, 4), Some(&id), Duration::from_secs(1)).unwrap();
    assert_eq!(
        share_id(&rv, world(3, 4), None, Duration::from_secs(1)).unwrap(),
        id
    );
    let err = share_id(&rv, world(1, 2), None, Duration::from_secs(1)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("world size 4") && msg.contains("has 2"),
        "{msg}"
    );
}

#[test]
fn file_peers_skip_a_stale_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id");
    let rv = Rendezvous::File(path.clone());
    share_id(&rv, world(0, 2), Some(&an_id()), Duration::from_secs(1)).unwrap();
    let old = SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let t = Instant::now();
    let err = share_id(&rv, world(1, 2), None, Duration::from_millis(300)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    let msg = format!("{err:#}");
    assert!(msg.contains("stale") && msg.contains("rank 1"), "{msg}");
}

#[test]
fn file_peer_without_a_master_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let rv = Rendezvous::File(dir.path().join("never"));
    let t = Instant::now();
    let err = share_id(&rv, world(2, 3), None, Duration::from_millis(500)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    let msg = format!("{err:#}");
    assert!(msg.contains("rank 2") && msg.contains("never"), "{msg}");
}

#[test]
fn unreachable_master_fails_in_time() {
    let port = free_port();
    let t = Instant::now();
    let err = share_id(&local(port), world(1, 2), None, Duration::from_secs(1)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let msg = format!("{err:#}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(
        msg.contains("rank 1") && msg.contains("MASTER_ADDR"),
        "{msg}"
    );
}

#[test]
fn master_times_out_saying_who_joined() {
    let rv = local(free_port());
    let peer = {
        let rv = rv.clone();
        thread::spawn(move || share_id(&rv, world(1, 3), None, Duration::from_secs(3)))
    };
    let t = Instant::now();
    let err = share_id(&rv, world(0, 3), Some(&an_id()), Duration::from_secs(1)).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    let msg = format!("{err:#}");
    assert!(msg.contains("only 1 of 2 peers joined within 1 s"), "{msg}");
    assert!(msg.contains("missing ranks 2"), "{msg}");
    // The peer that did join is told, rather than left waiting.
    let peer_err = format!("{:#}", peer.join().unwrap().unwrap_err());
    assert!(peer_err.contains("gave up"), "{peer_err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn world_size_mismatch_is_named_on_both_sides() {
    let rv = local(free_port());
    let peer = {
        let rv = rv.clone();
        thread::spawn(move || share_id(&rv, world(1, 4), None, Duration::from_secs(3)))
    };
    let t = Instant::now();
    let err = share_id(&rv, world(0, 2), Some(&an_id()), Duration::from_secs(3)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("rank 1") && msg.contains("says world size 4, rank 0 has 2"),
        "{msg}"
    );
    let peer_err = format!("{:#}", peer.join().unwrap().unwrap_err());
    assert!(
        peer_err.contains("says world size 4, rank 0 has 2"),
        "{peer_err}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn duplicate_ranks_are_rejected() {
    let rv = local(free_port());
    let peers: Vec<_> = (0..2)
        .map(|_| {
            let rv = rv.clone();
            thread::spawn(move || share_id(&rv, world(1, 3), None, Duration::from_secs(3)))
        })
        .collect();
    let err = share_id(&rv, world(0, 3), Some(&an_id()), Duration::from_secs(3)).unwrap_err();
    assert!(
        format!("{err:#}").contains("rank 1 joined twice"),
        "{err:#}"
    );
    for p in peers {
        assert!(p.join().unwrap().is_err());
    }
}

#[test]
fn busy_port_says_which_and_what_to_do() {
    let holder = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = share_id(
        &local(port),
        world(0, 2),
        Some(&an_id()),
        Duration::from_secs(1),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("port {port}")) && msg.contains("MASTER_PORT"),
        "{msg}"
    );
}

#[test]
fn id_only_on_rank_zero() {
    let rv = local(1);
    assert!(share_id(&rv, world(0, 2), None, Duration::ZERO).is_err());
    assert!(share_id(&rv, world(1, 2), Some(&[1, 2]), Duration::ZERO).is_err());
    assert!(share_id(&rv, world(2, 2), None, Duration::ZERO).is_err());
}

#[test]
fn parse_accepts_the_three_forms_and_prints_them_back() {
    let tcp = |h: &str, p| Rendezvous::Tcp {
        host: h.into(),
        port: p,
    };
    let cases = [
        (
            "tcp://10.0.0.1:29500",
            tcp("10.0.0.1", 29500),
            "tcp://10.0.0.1:29500",
        ),
        ("node17:1234", tcp("node17", 1234), "tcp://node17:1234"),
        ("tcp://[::1]:29500", tcp("::1", 29500), "tcp://[::1]:29500"),
        ("[fe80::1]:80", tcp("fe80::1", 80), "tcp://[fe80::1]:80"),
        (
            "file:/shared/job-42/id",
            Rendezvous::File(PathBuf::from("/shared/job-42/id")),
            "file:/shared/job-42/id",
        ),
        (
            "file:rel/id",
            Rendezvous::File(PathBuf::from("rel/id")),
            "file:rel/id",
        ),
    ];
    for (spec, want, shown) in cases {
        let rv = Rendezvous::parse(spec).unwrap();
        assert_eq!(rv, want, "{spec}");
        assert_eq!(rv.to_string(), shown);
        assert_eq!(Rendezvous::parse(shown).unwrap(), want);
    }
}

#[test]
fn parse_rejects_bad_specs_naming_them() {
    for spec in [
        "",
        "node17",
        "node17:",
        "node17:abc",
        "node17:0",
        "node17:70000",
        ":29500",
        "tcp://",
        "env://node:1",
        "file:",
        "::1:29500",
        "[::1]29500",
        "tcp://host:1/x",
    ] {
        let err = Rendezvous::parse(spec).unwrap_err().to_string();
        assert!(err.contains(&format!("{spec:?}")), "{spec}: {err}");
        assert!(
            err.contains("tcp://HOST:PORT, HOST:PORT or file:PATH"),
            "{err}"
        );
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

#[test]
fn from_env_reads_torchrun() {
    let got = LaunchEnv::from_env(env(&[
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.1"),
        ("MASTER_PORT", "1234"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(got.world, World { rank: 3, size: 8 });
    assert_eq!(got.local_rank, 1);
    assert_eq!(got.rendezvous.to_string(), "tcp://10.0.0.1:1234");

    // Defaults: LOCAL_RANK 0, MASTER_PORT 29500.
    let got = LaunchEnv::from_env(env(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "node1"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(got.local_rank, 0);
    assert_eq!(got.rendezvous.to_string(), "tcp://node1:29500");

    let file = Rendezvous::parse("file:/shared/id").unwrap();
    let got = got.with_rendezvous(file.clone());
    assert_eq!(got.rendezvous, file);

    // An explicit rendezvous makes MASTER_ADDR unnecessary.
    let got = LaunchEnv::from_env_with(
        env(&[("RANK", "1"), ("WORLD_SIZE", "2")]),
        Some(file.clone()),
    )
    .unwrap()
    .unwrap();
    assert_eq!(got.rendezvous, file);
    assert_eq!(got.world, World { rank: 1, size: 2 });

    // Not launched by torchrun.
    assert_eq!(LaunchEnv::from_env(env(&[])).unwrap(), None);
    assert_eq!(
        LaunchEnv::from_env(env(&[("MASTER_ADDR", "x"), ("RANK", "")])).unwrap(),
        None
    );
}

#[test]
fn from_env_errors_name_the_variable() {
    let base = [("MASTER_ADDR", "10.0.0.1")];
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("RANK", "abc"), ("WORLD_SIZE", "4")],
            "RANK=abc is not a number",
        ),
        (
            &[("RANK", "4"), ("WORLD_SIZE", "4")],
            "RANK=4 but WORLD_SIZE=4: ranks are 0..3",
        ),
        (
            &[("RANK", "-1"), ("WORLD_SIZE", "4")],
            "RANK=-1 is not a number",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "two")],
            "WORLD_SIZE=two is not a number",
        ),
        (&[("RANK", "0"), ("WORLD_SIZE", "0")], "WORLD_SIZE=0"),
        (&[("RANK", "1")], "RANK=1 is set but WORLD_SIZE is not"),
        (
            &[("WORLD_SIZE", "2")],
            "WORLD_SIZE=2 is set but RANK is not",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "x")],
            "LOCAL_RANK=x is not a number",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "99999")],
            "MASTER_PORT=99999 is not a port number",
        ),
        (
            &[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "0")],
            "MASTER_PORT=0 is not a port number",
        ),
    ];
    for (vars, want) in cases {
        let mut all: Vec<(&str, &str)> = base.to_vec();
        all.extend_from_slice(vars);
        let err = LaunchEnv::from_env(env(&all)).unwrap_err().to_string();
        assert!(err.contains(want), "{vars:?}: {err}");
    }
    let err = LaunchEnv::from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "2")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("WORLD_SIZE is set but MASTER_ADDR is not")
            && err.contains("--rendezvous file:PATH"),
        "{err}"
    );
    let err = LaunchEnv::from_env(env(&[
        ("RANK", "0"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.1:29500"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("MASTER_ADDR=10.0.0.1:29500") && err.contains("MASTER_PORT"),
        "{err}"
    );
}
