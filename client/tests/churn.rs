//! Endpoints that come and go while calls pick them leave nothing behind: no connection slot
//! for an endpoint that is no longer in the set, and no open socket once the calls on it have
//! ended — counted by the pool and, as a cross-check, in this process's open descriptors
//! (this file holds one test, so that no other test's sockets are counted).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hector_plugin_client::pool::Pool;
use tokio::task::JoinSet;
use tonic::Code;

use support::{Server, TestResult, eventually, generate_call, status_of};

/// Sockets this process has open.
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter(|target| target.to_string_lossy().starts_with("socket:"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_removed_while_calls_pick_them_leave_no_slot_and_no_socket() -> TestResult {
    let servers = [
        Server::start("0").await,
        Server::start("1").await,
        Server::start("2").await,
        Server::start("3").await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    // The listeners only.
    let baseline = open_sockets();
    let pool = Arc::new(Pool::new());
    pool.set_endpoints(addrs.clone());

    // Callers call without pause while the endpoint set changes under them.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut callers = JoinSet::new();
    for _ in 0..8 {
        let (pool, stop, answered) = (pool.clone(), stop.clone(), answered.clone());
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = pool.forward(generate_call(Duration::from_secs(5))).await;
                match status_of(&response) {
                    Code::Ok => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // An empty set, for a moment: that answer comes at once.
                    Code::Unavailable => tokio::task::yield_now().await,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
    }
    for round in 0..200usize {
        // Every subset of the four, in turn, the empty one included.
        let subset: Vec<SocketAddr> = (0..4)
            .filter(|i| round & (1 << i) != 0)
            .map(|i| addrs[i])
            .collect();
        pool.set_endpoints(subset.clone());
        assert!(
            pool.slots() <= subset.len(),
            "round {round}: {} slots",
            pool.slots()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(caller) = callers.join_next().await {
        caller?;
    }
    assert!(answered.load(Ordering::Relaxed) > 0, "no call was answered");

    pool.set_endpoints(vec![addrs[0]]);
    assert!(pool.slots() <= 1, "{} slots", pool.slots());
    assert!(
        eventually(Duration::from_secs(5), || pool.open_sockets() <= 1).await,
        "the pool still has {} sockets open",
        pool.open_sockets()
    );
    // Ours, and the servers' ends of them.
    assert!(
        eventually(Duration::from_secs(5), || open_sockets() <= baseline + 2).await,
        "{} sockets open, {baseline} before",
        open_sockets()
    );

    pool.set_endpoints(Vec::new());
    assert_eq!(pool.slots(), 0);
    assert!(
        eventually(Duration::from_secs(5), || pool.open_sockets() == 0).await,
        "the pool still has {} sockets open",
        pool.open_sockets()
    );
    assert!(
        eventually(Duration::from_secs(5), || open_sockets() <= baseline).await,
        "{} sockets open, {baseline} before",
        open_sockets()
    );
    Ok(())
}
