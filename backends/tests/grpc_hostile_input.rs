//! The hub and the gRPC client against hostile or faulty input: validities far ahead of the
//! hub's clock, statuses after a client clock step, lock data with the separator, a burst
//! of changes through the client's bounded queues, streams per connection, reconnects after
//! a hub restart. Real hubs on real sockets; every wait bounded.
#![cfg(feature = "grpc-server")]

use std::time::Duration;

use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::Backend;
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::LockStatusRequest;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::server::{Hub, HubLimits};
use reactive_lock_backends::testing::tokio_runtime as rt;
use reactive_lock_backends::testing::{HubServer, valid_for};

const KEY: &str = "payments";

fn status(instance: &str, busy: bool, valid_until: prost_types::Timestamp) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: KEY.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: busy.then(|| "batch".to_string()),
        valid_until: Some(valid_until),
    }
}

/// Whether the hub reports `KEY` blocked, read through a fresh client.
fn blocked_at(url: &str) -> bool {
    block_on(async {
        let backend = GrpcBackend::connect([url.to_string()]).await.unwrap();
        backend.snapshot(KEY).await.unwrap().is_blocked()
    })
}

/// Sends `statuses` in order with `pause` between them, each acknowledged.
fn send(url: &str, statuses: Vec<LockStatusRequest>, pause: Duration) {
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(url.to_string())
            .await
            .unwrap();
        for (i, s) in statuses.into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            client.set_status(s).await.unwrap();
        }
    });
}

/// Issue 21 part 9: a client whose clock ran an hour ahead publishes busy; its clock steps
/// back and it publishes idle, valid for 10 s on its clock. The idle status must release
/// the key, not wait an hour behind the busy one.
#[test]
fn idle_after_a_client_clock_step_back_unblocks() {
    let hub = HubServer::start();
    let hour_ahead = valid_for(Duration::from_secs(3600 + 10));
    send(
        &hub.url,
        vec![
            status("stepped", true, hour_ahead),
            status("stepped", false, valid_for(Duration::from_secs(10))),
        ],
        // Past the hub's reorder window (a client renews every 5 s by default): the idle
        // status cannot be an older message still in transit.
        Duration::from_millis(2500),
    );
    assert!(
        !blocked_at(&hub.url),
        "the idle status after the clock step must supersede the busy one"
    );
}

/// Issue 21 part 9: a step smaller than the hub's maximum validity (30 s ahead), so the
/// busy status is stored as sent; the idle status after the step still releases the key
/// once it cannot be a reordered older message.
#[test]
fn idle_after_a_small_client_clock_step_back_unblocks() {
    let hub = HubServer::start();
    send(
        &hub.url,
        vec![
            status("stepped", true, valid_for(Duration::from_secs(40))),
            status("stepped", false, valid_for(Duration::from_secs(10))),
        ],
        // Past the hub's reorder window: the idle status cannot be an older message still
        // in transit.
        Duration::from_millis(2500),
    );
    assert!(!blocked_at(&hub.url), "idle supersedes busy after the step");
}

/// Issue 21 part 9: a busy status valid until the year 10000 (a hostile peer) followed by
/// the same instance's idle status: the key must not stay blocked.
#[test]
fn a_year_10000_validity_does_not_wedge_the_key() {
    let hub = HubServer::start();
    // 10000-01-01T00:00:00Z.
    let year_10000 = prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    };
    send(
        &hub.url,
        vec![
            status("hostile", true, year_10000),
            status("hostile", false, valid_for(Duration::from_secs(10))),
        ],
        // Past the hub's reorder window.
        Duration::from_millis(2500),
    );
    assert!(
        !blocked_at(&hub.url),
        "idle after the year-10000 busy status"
    );
}

/// Polls `check` until it holds, or panics naming `what` after `limit`.
fn until(limit: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hub_with(configure: impl FnOnce(&mut HubLimits)) -> HubServer {
    let mut limits = HubLimits::default();
    configure(&mut limits);
    HubServer::start_with(Hub::new(limits), None, None)
}

/// Issue 21 part 9: a validity beyond the hub's `max_validity` is capped on the hub's clock,
/// so even with no later status from its instance the key unblocks at the cap.
#[test]
fn a_far_validity_is_capped_on_the_hubs_clock() {
    let hub = hub_with(|l| l.max_validity = Duration::from_millis(800));
    let far = prost_types::Timestamp {
        seconds: i64::MAX,
        nanos: 999_999_999,
    };
    send(&hub.url, vec![status("hostile", true, far)], Duration::ZERO);
    assert!(blocked_at(&hub.url), "busy until the cap");
    until(
        Duration::from_secs(10),
        "the capped busy status expires",
        || !blocked_at(&hub.url),
    );
}

/// Issue 21 part 2: a subscriber whose connection stopped reading is dropped after the
/// hub's `stall_timeout`, with fewer notifications waiting than its buffer holds.
#[test]
fn a_peer_that_never_reads_is_dropped_after_the_stall_timeout() {
    let hub = hub_with(|l| {
        l.subscriber_buffer = 100_000;
        l.stall_timeout = Duration::from_millis(300);
    });
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let first = status("reader", false, valid_for(Duration::from_secs(10)));
        let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
        let mut stalled = client
            .subscribe_lock_status(requests)
            .await
            .unwrap()
            .into_inner();
        stalled.message().await.unwrap().expect("the current state");
        // More than the HTTP/2 windows hold, far fewer than `subscriber_buffer`: only the
        // stall timeout can end the stream.
        let mut writer = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        for i in 0..400 {
            let mut s = status("writer", i % 2 == 0, valid_for(Duration::from_secs(60)));
            s.lock_data = Some(format!("v{i}-{}", "x".repeat(15_000)));
            writer.set_status(s).await.unwrap();
        }
        // The periodic check runs every second; give it a few.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stalled.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return None,
                    Err(status) => return Some(status),
                }
            }
        })
        .await
        .expect("the stalled stream ends");
        let status = end.expect("ended with an error status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
        assert!(status.message().contains("stall_timeout"), "{status}");
    });
}

/// Issue 21 part 8: lock data with `;`, newlines and non-ASCII reaches another instance
/// through a hub unchanged; lock data holding the separator is refused naming the key.
#[test]
fn lock_data_round_trips_through_a_hub_and_the_separator_is_refused() {
    use reactive_lock::{Error, ReactiveLock, TrackerConfig};
    let hub = HubServer::start();
    let data = "a;b;;c\nline two\r\n ünïcødé — 🚀 ;";
    block_on(async {
        let connect = || async { GrpcBackend::connect([hub.url.clone()]).await.unwrap() };
        let writer = ReactiveLock::builder()
            .instance_name("writer")
            .tracker(KEY, TrackerConfig::new())
            .build(connect().await)
            .await
            .unwrap();
        let reader = ReactiveLock::builder()
            .instance_name("reader")
            .tracker(KEY, TrackerConfig::new())
            .build(connect().await)
            .await
            .unwrap();
        let ctrl = writer.controller(KEY).unwrap();
        let refused = ctrl.increment(Some("x#REACTIVELOCK#y")).await;
        assert!(
            matches!(&refused, Err(Error::InvalidLockData { key }) if key == KEY),
            "{refused:?}"
        );
        assert_eq!(ctrl.count(), 0);
        ctrl.increment(Some(data)).await.unwrap();
        let state = reader.state(KEY).unwrap();
        reactive_lock_backends::conformance::eventually(
            &state,
            reactive_lock_backends::conformance::PROPAGATION_LIMIT,
            "the reader sees the data",
            |s| s.is_blocked(),
        )
        .await;
        assert_eq!(state.lock_data_entries(), [data]);
        let snapshot = connect().await.snapshot(KEY).await.unwrap();
        assert_eq!(snapshot.lock_data_entries(), [data]);
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

use reactive_lock_backends::testing::{await_burst_final_states, publish_burst};

/// Issue 21 part 2: a subscriber that lags behind a burst on many keys: the client's bounded
/// queues coalesce per key (the stream tasks keep reading, the hub never sees a stall) and
/// every key's final state still arrives.
#[test]
fn a_burst_on_many_keys_still_delivers_every_keys_final_state() {
    let hub = HubServer::start();
    let keys: Vec<String> = (0..20).map(|k| format!("burst-{k}")).collect();
    block_on(async {
        let subscriber = GrpcBackend::connect([hub.url.clone()]).await.unwrap();
        let mut events = subscriber.subscribe("reader", &keys).await.unwrap();
        let writer = GrpcBackend::connect([hub.url.clone()]).await.unwrap();
        // Not polled meanwhile: the subscriber lags by the whole burst.
        publish_burst(&writer, &keys, 50).await;
        await_burst_final_states(&mut events, &keys).await;
        for key in &keys {
            assert_eq!(
                hub.hub.subscriber_count(key),
                1,
                "no stream dropped as stalled"
            );
        }
    });
}

/// A hub that records when each subscription stream opens.
#[derive(Clone)]
struct Recording {
    hub: Hub,
    /// When each subscription stream opened.
    opened: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
}

#[tonic::async_trait]
impl reactive_lock_backends::grpc::proto::reactive_lock_grpc_server::ReactiveLockGrpc
    for Recording
{
    async fn set_status(
        &self,
        request: tonic::Request<LockStatusRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        self.hub.set_status(request).await
    }

    type SubscribeLockStatusStream = <Hub as reactive_lock_backends::grpc::proto::reactive_lock_grpc_server::ReactiveLockGrpc>::SubscribeLockStatusStream;

    async fn subscribe_lock_status(
        &self,
        request: tonic::Request<tonic::Streaming<LockStatusRequest>>,
    ) -> Result<tonic::Response<Self::SubscribeLockStatusStream>, tonic::Status> {
        self.opened.lock().unwrap().push(std::time::Instant::now());
        self.hub.subscribe_lock_status(request).await
    }
}

/// A recording hub served at `addr` on its own runtime thread until `crash` fires; then its
/// runtime is dropped with every connection, as a crashed process's would be.
fn serve_recording(
    addr: std::net::SocketAddr,
    recording: Recording,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    use reactive_lock_backends::grpc::proto::reactive_lock_grpc_server::ReactiveLockGrpcServer;
    let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = rt();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            ready_tx.send(()).unwrap();
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let server = tonic::transport::Server::builder()
                .add_service(ReactiveLockGrpcServer::new(recording))
                .serve_with_incoming(incoming);
            tokio::select! {
                _ = server => {}
                _ = crashed => {}
            }
        });
        rt.shutdown_background();
    });
    ready_rx.recv().expect("hub started");
    (crash, thread)
}

/// Waits until `opened` holds `n` timestamps, or panics naming `what`.
fn wait_opened(opened: &std::sync::Mutex<Vec<std::time::Instant>>, n: usize, what: &str) {
    until(Duration::from_secs(60), what, || {
        opened.lock().unwrap().len() >= n
    });
}

/// Accepts every connection at `addr` and closes it at once (a hub that is down but whose
/// port answers), recording when each arrived, until `stop` is set.
fn refuse_recording(
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<std::time::Instant>> {
    let listener = std::net::TcpListener::bind(addr).expect("bind");
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut attempts = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    attempts.push(std::time::Instant::now());
                    drop(stream);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        attempts
    })
}

/// The largest share of `times` (ms) inside any window of `window` ms.
fn peak_share(times: &[f64], window: f64) -> f64 {
    let mut sorted = times.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] > window {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best as f64 / sorted.len().max(1) as f64
}

/// Issue 21 part 4: after a hub goes down, 100 clients × 10 keys retry spread over time, not
/// in lockstep, and all come back once it returns. Measured at the hub's address: while
/// it is down, a listener there accepts and closes every connection, recording when each
/// reopening attempt arrived (a key's attempt opens a connection unless another key of its
/// client is connecting at that moment). Past the first backoff steps (which are short
/// whatever the jitter), lockstep packs each step's attempts into one instant; jitter
/// spreads them over the step.
#[test]
fn reconnects_after_a_hub_restart_are_spread_out() {
    let clients = 100;
    let keys: Vec<String> = (0..10).map(|k| format!("spread-{k}")).collect();
    let streams = clients * keys.len();
    let addr: std::net::SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let url = format!("http://{addr}");
    let first = Recording {
        hub: Hub::default(),
        opened: Default::default(),
    };
    let (crash, thread) = serve_recording(addr, first.clone());
    let client_rt = rt();
    let subscriptions: Vec<_> = client_rt.block_on(async {
        let mut subscriptions = Vec::new();
        for c in 0..clients {
            let backend = GrpcBackend::builder([url.clone()])
                .runtime(tokio::runtime::Handle::current())
                .connect()
                .await
                .unwrap();
            let events = backend
                .subscribe(&format!("client-{c}"), &keys)
                .await
                .unwrap();
            subscriptions.push((backend, events));
        }
        subscriptions
    });
    wait_opened(
        &first.opened,
        streams,
        "every stream opens on the first hub",
    );
    crash.send(()).unwrap();
    thread.join().unwrap();
    let crashed = std::time::Instant::now();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let refusing = refuse_recording(addr, stop.clone());
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let attempts = refusing.join().unwrap();
    let ms: Vec<f64> = attempts
        .iter()
        .map(|t| t.saturating_duration_since(crashed).as_secs_f64() * 1_000.0)
        .filter(|&t| t >= 500.0)
        .collect();
    let n = ms.len() as f64;
    let mean = ms.iter().sum::<f64>() / n;
    let stddev = (ms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / n).sqrt();
    let peak = peak_share(&ms, 100.0);
    eprintln!(
        "reopening attempts while the hub was down: {} in all, {} from 500 ms on: \
         stddev {stddev:.0} ms, at most {:.1}% of them within any 100 ms",
        attempts.len(),
        ms.len(),
        peak * 100.0
    );
    let second = Recording {
        hub: Hub::default(),
        opened: Default::default(),
    };
    let (crash, thread) = serve_recording(addr, second.clone());
    wait_opened(
        &second.opened,
        streams,
        "every stream reopens on the restarted hub",
    );
    assert!(
        ms.len() >= clients,
        "every client retried past 500 ms: {}",
        ms.len()
    );
    // Jitter leaves about a tenth of the attempts in the busiest 100 ms; lockstep
    // (the same backoff without jitter) a third.
    assert!(
        peak < 0.2,
        "reopening attempts in lockstep: {:.1}% within 100 ms",
        peak * 100.0
    );
    drop(subscriptions);
    drop(client_rt);
    crash.send(()).unwrap();
    thread.join().unwrap();
}

/// Issue 21 part 2: the hub caps the streams one client connection may hold open; a
/// stream past the cap waits for a slot instead of adding to the hub's load.
#[test]
fn streams_per_connection_are_capped() {
    let hub = hub_with(|l| l.max_streams_per_connection = 2);
    rt().block_on(async {
        let client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let open = |instance: &'static str| {
            let mut client = client.clone();
            async move {
                let first = status(instance, false, valid_for(Duration::from_secs(10)));
                let mut stream = client
                    .subscribe_lock_status(futures_lite::stream::once(first))
                    .await?
                    .into_inner();
                stream.message().await?;
                Ok::<_, tonic::Status>(stream)
            }
        };
        let first = open("one").await.unwrap();
        let _second = open("two").await.unwrap();
        let mut third = tokio::spawn(open("three"));
        let waited = tokio::time::timeout(Duration::from_millis(500), &mut third).await;
        assert!(
            waited.is_err(),
            "a third stream on the connection waits for a slot"
        );
        assert_eq!(hub.hub.subscriber_count(KEY), 2);
        drop(first);
        tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .expect("the third stream opens once a slot is free")
            .unwrap()
            .unwrap();
    });
}

/// A `validUntil` whose nanos are out of range (here 1.5 s of them) is stored normalized,
/// as every reader expects it (.NET's `Timestamp.ToDateTime` throws on others), and still
/// blocks the key for as long as it says.
#[test]
fn a_validity_with_out_of_range_nanos_is_stored_normalized() {
    let hub = HubServer::start();
    let mut until = valid_for(Duration::from_secs(60));
    until.nanos = 1_500_000_000;
    send(&hub.url, vec![status("odd", true, until)], Duration::ZERO);
    let stored = rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let first = status("reader", false, valid_for(Duration::from_secs(60)));
        let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
        let mut stream = client
            .subscribe_lock_status(requests)
            .await
            .unwrap()
            .into_inner();
        let current = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the current state")
            .unwrap()
            .unwrap();
        current.instances_status["odd"].valid_until.unwrap()
    });
    assert!((0..1_000_000_000).contains(&stored.nanos), "{stored:?}");
    assert_eq!(stored.seconds, until.seconds + 1);
    assert_eq!(stored.nanos, 500_000_000);
    assert!(blocked_at(&hub.url));
}
