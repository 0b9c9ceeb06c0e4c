//! Dead and slow endpoints, on loopback: a peer that stops answering is found by keepalive
//! PINGs; callers waiting for a connect that never completes each end at their own deadline;
//! an endpoint whose calls keep timing out is ejected for a while and comes back once it
//! answers; a streamed answer that stalls ends at the caller's deadline — and what must not
//! happen: a single slow call ejects nothing, and the last endpoints are never ejected.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hector_plugin_client::pool::{Pool, PoolSettings};
use hector_plugin_client::{ChannelOptions, Ejection, Keepalive, PluginChannel, served};
use hector_plugin_sdk::PluginType;
use tokio::task::JoinSet;
use tonic::Code;

use support::{
    BlackHole, Mute, Proxy, Server, TestResult, ask, ask_within, eventually, generate_call,
    status_of,
};

/// Fast keepalive, so that a test sees it act within a second.
fn quick_keepalive() -> Keepalive {
    Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
        while_idle: true,
    }
}

async fn channel(addrs: &[SocketAddr], options: &ChannelOptions) -> PluginChannel {
    let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    PluginChannel::connect_with(&list.join(","), PluginType::LlmProvider, options)
        .await
        .expect("channel")
}

#[tokio::test]
async fn keepalive_finds_a_peer_that_stopped_answering_and_takes_it_out() -> TestResult {
    let server = Server::start("s").await;
    let proxy = Proxy::start(server.addr).await;
    let options = ChannelOptions::new().keepalive(quick_keepalive());
    let channel = channel(&[proxy.addr], &options).await;
    let mut llm = channel.llm()?;
    llm.generate(ask("warm up")).await?;

    // The peer neither answers nor closes: only the missing PING answer can tell.
    proxy.freeze();
    let deadline = Duration::from_secs(30);
    let started = Instant::now();
    let status = llm
        .generate(ask_within("x", deadline))
        .await
        .expect_err("nothing answers");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(
        status.message().contains("keepalive PING")
            && status.message().contains(&proxy.addr.to_string()),
        "{status}"
    );
    assert!(
        took < deadline / 3,
        "found by keepalive, not by the deadline: {took:?}"
    );
    assert_eq!(channel.down(), [proxy.addr], "out of the rotation");
    assert_eq!(server.calls(), 1, "the call after the freeze never arrived");
    Ok(())
}

#[tokio::test]
async fn an_idle_connection_to_a_frozen_peer_costs_the_next_call_nothing_but_the_ping() -> TestResult
{
    // Two endpoints; the one behind the proxy freezes while idle. A call sent to it fails
    // fast (it may have arrived, so it is not repeated), and later calls go to the other.
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    let proxy = Proxy::start(a.addr).await;
    let options = ChannelOptions::new().keepalive(quick_keepalive());
    let channel = channel(&[proxy.addr, b.addr], &options).await;
    let mut llm = channel.llm()?;
    for i in 0..4 {
        llm.generate(ask(&format!("warm {i}"))).await?;
    }
    proxy.freeze();
    let mut failed = 0;
    for i in 0..10 {
        match llm
            .generate(ask_within(&format!("call {i}"), Duration::from_secs(30)))
            .await
        {
            Ok(r) => assert_eq!(served(&r).map(|s| s.endpoint), Some(b.addr)),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status}");
                failed += 1;
            }
        }
    }
    assert!(failed <= 1, "{failed} calls failed");
    assert_eq!(channel.down(), [proxy.addr]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_callers_waiting_for_a_connect_that_never_completes_each_end_at_their_deadline()
-> TestResult {
    let hole = BlackHole::start().await;
    // The connect itself would take 30 s to give up: only the callers' deadlines end them.
    let pool = Arc::new(Pool::with_settings(PoolSettings {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    }));
    pool.set_endpoints(vec![hole.addr]);
    let mut calls = JoinSet::new();
    for k in 0..50u64 {
        let pool = pool.clone();
        let timeout = Duration::from_millis(300 + 20 * k);
        calls.spawn(async move {
            let started = Instant::now();
            let response = pool.forward(generate_call(timeout)).await;
            (timeout, started.elapsed(), status_of(&response))
        });
    }
    let mut ended = 0;
    while let Some(joined) = calls.join_next().await {
        let (timeout, took, code) = joined?;
        assert_eq!(code, Code::DeadlineExceeded);
        // One at a time, the k-th would wait for k connects: seconds, not a margin.
        assert!(
            took < timeout + Duration::from_secs(1),
            "a call with a {timeout:?} deadline took {took:?}"
        );
        ended += 1;
    }
    assert_eq!(ended, 50);
    assert_eq!(pool.slots(), 1, "one endpoint, one slot");
    assert_eq!(pool.open_sockets(), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_go_to_the_endpoint_that_connects_rather_than_wait_for_one_that_never_does()
-> TestResult {
    let hole = BlackHole::start().await;
    let good = Server::start("good").await;
    let pool = Arc::new(Pool::with_settings(PoolSettings {
        connect_timeout: Duration::from_secs(30),
        ..Default::default()
    }));
    pool.set_endpoints(vec![hole.addr, good.addr]);
    let mut calls = JoinSet::new();
    let timeout = Duration::from_secs(3);
    for _ in 0..50 {
        let pool = pool.clone();
        calls.spawn(async move {
            let started = Instant::now();
            let response = pool.forward(generate_call(timeout)).await;
            (started.elapsed(), status_of(&response))
        });
    }
    let mut answered = 0;
    while let Some(joined) = calls.join_next().await {
        let (took, code) = joined?;
        assert!(took < timeout + Duration::from_secs(1), "{took:?}");
        if code == Code::Ok {
            answered += 1;
        } else {
            assert_eq!(code, Code::DeadlineExceeded);
        }
    }
    assert_eq!(
        answered, 50,
        "every caller went to the endpoint that connected"
    );
    assert_eq!(good.calls(), 50);
    Ok(())
}

#[tokio::test]
async fn a_peer_that_accepts_but_never_speaks_http2_is_a_failed_connect_not_a_lost_call()
-> TestResult {
    let mute = Mute::start().await;
    let good = Server::start("good").await;
    let options = ChannelOptions::new().connect_timeout(Duration::from_millis(500));
    let channel = channel(&[mute.addr, good.addr], &options).await;
    let mut llm = channel.llm()?;
    for i in 0..20 {
        let r = llm
            .generate(ask_within(&format!("call {i}"), Duration::from_secs(5)))
            .await?;
        assert_eq!(served(&r).map(|s| s.endpoint), Some(good.addr));
    }
    assert!(
        eventually(Duration::from_secs(2), || channel.down() == [mute.addr]).await,
        "{:?}",
        channel.down()
    );

    // Alone, it fails the call as unreachable: nothing was sent.
    let channel = self::channel(&[mute.addr], &options).await;
    let status = channel
        .llm()?
        .generate(ask_within("x", Duration::from_secs(5)))
        .await
        .expect_err("mute");
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(
        status.message().contains("cannot reach")
            && status.message().contains("no HTTP/2 answer within 500ms"),
        "{status}"
    );
    Ok(())
}

fn ejecting(after: u32, base: Duration) -> ChannelOptions {
    ChannelOptions::new().ejection(Ejection {
        consecutive_failures: after,
        base,
        max: base * 4,
    })
}

#[tokio::test]
async fn an_endpoint_whose_calls_time_out_is_ejected_then_readmitted_once_it_answers() -> TestResult
{
    let good = Server::start("good").await;
    let slow = Server::start("slow").await;
    let base = Duration::from_secs(2);
    let channel = channel(&[good.addr, slow.addr], &ejecting(3, base)).await;
    let mut llm = channel.llm()?;
    slow.stall(true);

    // Round robin: every other call lands on the slow one and times out.
    let short = Duration::from_millis(200);
    let mut timeouts = 0;
    while channel.ejected().is_empty() {
        match llm.generate(ask_within("x", short)).await {
            Ok(r) => assert_eq!(served(&r).map(|s| s.endpoint), Some(good.addr)),
            Err(status) => {
                assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
                timeouts += 1;
                assert!(timeouts <= 3, "not ejected after {timeouts} timeouts");
            }
        }
    }
    let ejected_at = Instant::now();
    assert_eq!(timeouts, 3);
    assert_eq!(channel.ejected(), [slow.addr]);
    let slow_calls = slow.calls();

    // While ejected, it gets no call.
    for i in 0..20 {
        let r = llm
            .generate(ask_within(&format!("after {i}"), short))
            .await?;
        assert_eq!(served(&r).map(|s| s.endpoint), Some(good.addr));
    }
    assert_eq!(slow.calls(), slow_calls);

    // Recovered: once the ejection has run out, a probe readmits it and it serves again.
    slow.stall(false);
    let back = loop {
        let r = llm
            .generate(ask_within("again", Duration::from_secs(5)))
            .await?;
        if served(&r).map(|s| s.endpoint) == Some(slow.addr) {
            break ejected_at.elapsed();
        }
        assert!(
            ejected_at.elapsed() < base * 5,
            "never readmitted: {:?}",
            channel.down()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        back >= base,
        "readmitted after {back:?}, before the ejection ran out"
    );
    assert!(channel.ejected().is_empty());
    Ok(())
}

#[tokio::test]
async fn a_single_slow_call_ejects_nothing() -> TestResult {
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    let channel = channel(&[a.addr, b.addr], &ejecting(3, Duration::from_secs(60))).await;
    let mut llm = channel.llm()?;
    // Two timeouts on `b`, each followed by an answer from it: never three in a row.
    for _ in 0..2 {
        b.stall(true);
        let mut timed_out = false;
        while !timed_out {
            match llm
                .generate(ask_within("x", Duration::from_millis(200)))
                .await
            {
                Err(s) => {
                    assert_eq!(s.code(), Code::DeadlineExceeded, "{s}");
                    timed_out = true;
                }
                Ok(r) => assert_eq!(served(&r).map(|s| s.endpoint), Some(a.addr)),
            }
        }
        b.stall(false);
        let before = b.calls();
        while b.calls() == before {
            llm.generate(ask("y")).await?;
        }
    }
    assert!(channel.ejected().is_empty(), "{:?}", channel.ejected());
    assert!(channel.down().is_empty());
    Ok(())
}

#[tokio::test]
async fn the_last_endpoints_are_never_ejected() -> TestResult {
    // Both endpoints time out on every call: one may be ejected, never both, and calls still
    // reach the other.
    let a = Server::start("a").await;
    let b = Server::start("b").await;
    a.stall(true);
    b.stall(true);
    let channel = channel(&[a.addr, b.addr], &ejecting(2, Duration::from_secs(60))).await;
    let mut llm = channel.llm()?;
    for _ in 0..12 {
        let status = llm
            .generate(ask_within("x", Duration::from_millis(100)))
            .await
            .expect_err("stalled");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    }
    assert_eq!(channel.ejected().len(), 1, "{:?}", channel.ejected());
    let before = a.calls() + b.calls();
    for _ in 0..4 {
        let _ = llm
            .generate(ask_within("x", Duration::from_millis(100)))
            .await;
    }
    assert_eq!(a.calls() + b.calls(), before + 4, "still called");

    // A single endpoint: never ejected, however slow.
    let only = Server::start("only").await;
    only.stall(true);
    let channel = channel_to(only.addr).await;
    let mut llm = channel.llm()?;
    for _ in 0..6 {
        let status = llm
            .generate(ask_within("x", Duration::from_millis(100)))
            .await
            .expect_err("stalled");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    }
    assert!(channel.ejected().is_empty() && channel.down().is_empty());
    assert_eq!(only.calls(), 6);
    Ok(())
}

async fn channel_to(addr: SocketAddr) -> PluginChannel {
    channel(&[addr], &ejecting(2, Duration::from_secs(60))).await
}

#[tokio::test]
async fn a_streamed_answer_that_stalls_ends_at_the_deadline() -> TestResult {
    let server = Server::start("s").await;
    let channel = channel(&[server.addr], &ChannelOptions::new()).await;
    let mut llm = channel.llm()?;

    // Headers and one chunk arrive, then nothing: the deadline still holds.
    let deadline = Duration::from_millis(500);
    let started = Instant::now();
    let mut stream = llm
        .generate_streaming(ask_within("stall", deadline))
        .await?
        .into_inner();
    let first = stream.message().await?.ok_or("no first chunk")?;
    assert_eq!(first.text, "s");
    let status = stream.message().await.expect_err("stalled");
    let took = started.elapsed();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status}");
    assert!(took >= deadline, "ended before the deadline: {took:?}");
    assert!(took < deadline + Duration::from_secs(2), "{took:?}");

    // A stream that does not stall ends normally within its deadline.
    let mut stream = llm
        .generate_streaming(ask_within("go", Duration::from_secs(5)))
        .await?
        .into_inner();
    let mut chunks = 0;
    while stream.message().await?.is_some() {
        chunks += 1;
    }
    assert_eq!(chunks, 2);
    // And one without a deadline is not cut short by anything here.
    let mut stream = llm.generate_streaming(ask("go")).await?.into_inner();
    assert!(stream.message().await?.is_some());
    assert!(
        eventually(Duration::from_secs(2), || channel.down().is_empty()).await,
        "a stall is no reason to take the endpoint out at once"
    );
    Ok(())
}
