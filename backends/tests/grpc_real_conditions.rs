//! The gRPC backend and hub under real conditions: a server's concurrent-stream limit, a
//! key whose full state grows past the notification limit, a key whose stream fails while
//! others work, a stalled subscriber, publishes completed out of order, a client that never
//! sends its first message. Real sockets and real tonic servers throughout; every wait is
//! bounded, so a hang fails with a message.
#![cfg(feature = "grpc-server")]

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use futures_lite::{Stream, StreamExt};
use reactive_lock::{Backend, InstanceStatus, ReactiveLock, Status, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_server::{
    ReactiveLockGrpc, ReactiveLockGrpcServer,
};
use reactive_lock_backends::grpc::proto::{LockStatusNotification, LockStatusRequest};
use reactive_lock_backends::grpc::server::{Hub, HubLimits};
use reactive_lock_backends::testing::HubServer;
use reactive_lock_backends::testing::tokio_runtime as rt;
use reactive_lock_backends::testing::valid_for;

const KEY: &str = "payments";

/// `fut`, or a panic naming `what` after `limit`: a hang fails instead of stalling CI.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    futures_lite::future::or(fut, async {
        async_io::Timer::after(limit).await;
        panic!("not within {limit:?}: {what}");
    })
    .await
}

fn request(instance: &str, busy: bool, data: Option<String>) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: KEY.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: data,
        valid_until: Some(valid_for(Duration::from_secs(60))),
    }
}

/// Subscribes like the .NET client: the first message names the key and the subscriber,
/// the request stream then stays open.
async fn raw_subscribe(url: &str) -> tonic::Streaming<LockStatusNotification> {
    let mut client = ReactiveLockGrpcClient::connect(url.to_string())
        .await
        .unwrap();
    let first = request("dotnet-reader", false, None);
    let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
    client
        .subscribe_lock_status(requests)
        .await
        .unwrap()
        .into_inner()
}

/// Serves `service` on an ephemeral port with `configure` applied to the tonic server, on
/// the current runtime; returns the URL.
async fn serve<S>(
    service: ReactiveLockGrpcServer<S>,
    configure: impl FnOnce(tonic::transport::Server) -> tonic::transport::Server,
) -> String
where
    S: ReactiveLockGrpc,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = configure(tonic::transport::Server::builder()).add_service(service);
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    url
}

/// Item: more keys than the server's concurrent-stream limit (Kestrel's HTTP/2 default is
/// 100) still build, publish and propagate.
#[test]
fn more_keys_than_the_servers_stream_limit() {
    let rt = rt();
    let url = rt.block_on(async {
        serve(Hub::default().service(), |s| s.max_concurrent_streams(100)).await
    });
    let keys: Vec<String> = (0..120).map(|i| format!("key-{i}")).collect();
    let build = |name: &'static str| {
        let (url, keys) = (url.clone(), keys.clone());
        async move {
            let mut builder = ReactiveLock::builder().instance_name(name);
            for key in &keys {
                builder = builder.tracker(key.as_str(), TrackerConfig::new());
            }
            builder
                .build(GrpcBackend::connect([url]).await.unwrap())
                .await
                .unwrap()
        }
    };
    block_on(async {
        let limit = Duration::from_secs(20);
        let a = within(limit, "a builds with 120 keys", build("a")).await;
        let b = within(limit, "b builds with 120 keys", build("b")).await;
        let ctrl = a.controller("key-119").unwrap();
        within(limit, "a publishes", ctrl.increment(Some("last")))
            .await
            .unwrap();
        eventually(
            &b.state("key-119").unwrap(),
            PROPAGATION_LIMIT,
            "b sees key-119 busy",
            |s| s.lock_data().as_deref() == Some("last"),
        )
        .await;
        within(limit, "a publishes idle", ctrl.decrement(1))
            .await
            .unwrap();
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// Item: statuses each within `max_lock_data_len` cannot add up to a key whose full state is
/// too big to send: the status that would overflow it is refused, naming the limit, and the
/// key stays readable.
#[test]
fn a_keys_total_size_is_bounded() {
    let hub = HubServer::start();
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let data = "x".repeat(HubLimits::default().max_lock_data_len);
        let mut refused = Vec::new();
        for i in 0..70 {
            if let Err(status) = client
                .set_status(request(&format!("instance-{i}"), true, Some(data.clone())))
                .await
            {
                refused.push((i, status.code(), status.message().to_string()));
            }
        }
        let mut stream = raw_subscribe(&hub.url).await;
        let first = stream.message().await;
        assert!(
            matches!(first, Ok(Some(_))),
            "a subscriber gets the key's state: {:?}",
            first.map(|n| n.map(|n| n.instances_status.len()))
        );
        let (_, code, message) = refused.first().expect("the overflowing status is refused");
        assert_eq!(*code, tonic::Code::ResourceExhausted, "{message}");
        assert!(message.contains("max_notification_size"), "{message}");
    });
}

/// A hub whose subscriptions for the key "sick" fail on their next message once `sick` is
/// set (as a key whose notification cannot be encoded does), counting the subscriptions
/// to "sick" that reached their first message.
#[derive(Clone)]
struct SickKey {
    hub: Hub,
    sick: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
}

type Notifications =
    Pin<Box<dyn Stream<Item = Result<LockStatusNotification, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ReactiveLockGrpc for SickKey {
    async fn set_status(
        &self,
        request: tonic::Request<LockStatusRequest>,
    ) -> Result<tonic::Response<()>, tonic::Status> {
        self.hub.set_status(request).await
    }

    type SubscribeLockStatusStream = Notifications;

    async fn subscribe_lock_status(
        &self,
        request: tonic::Request<tonic::Streaming<LockStatusRequest>>,
    ) -> Result<tonic::Response<Notifications>, tonic::Status> {
        let inner = self.hub.subscribe_lock_status(request).await?.into_inner();
        let (sick, attempts) = (self.sick.clone(), self.attempts.clone());
        let mut first = true;
        let mut failed = false;
        let stream = inner.map_while(move |item| {
            if failed {
                return None;
            }
            let is_sick = matches!(&item, Ok(n) if n.lock_key == "sick");
            if is_sick && std::mem::take(&mut first) {
                attempts.fetch_add(1, Ordering::Relaxed);
            }
            if is_sick && sick.load(Ordering::Relaxed) {
                failed = true;
                return Some(Err(tonic::Status::out_of_range(
                    "the key's state is too big",
                )));
            }
            Some(item)
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Item: a key whose stream fails turns Unknown while the other keys stay known, and the
/// failing stream is retried with backoff, not in a tight loop.
#[test]
fn a_key_whose_stream_fails_turns_unknown_alone() {
    let rt = rt();
    let sick = SickKey {
        hub: Hub::default(),
        sick: Arc::new(AtomicBool::new(false)),
        attempts: Arc::new(AtomicUsize::new(0)),
    };
    let url = rt.block_on(serve(ReactiveLockGrpcServer::new(sick.clone()), |s| s));
    block_on(async {
        let reader = ReactiveLock::builder()
            .instance_name("reader")
            .tracker("healthy", TrackerConfig::new())
            .tracker("sick", TrackerConfig::new())
            .build(GrpcBackend::connect([url.clone()]).await.unwrap())
            .await
            .unwrap();
        let writer = ReactiveLock::builder()
            .instance_name("writer")
            .tracker("healthy", TrackerConfig::new())
            .tracker("sick", TrackerConfig::new())
            .build(GrpcBackend::connect([url.clone()]).await.unwrap())
            .await
            .unwrap();
        sick.sick.store(true, Ordering::Relaxed);
        let before = sick.attempts.load(Ordering::Relaxed);
        writer
            .controller("sick")
            .unwrap()
            .increment(None)
            .await
            .unwrap();
        let sick_state = reader.state("sick").unwrap();
        eventually(
            &sick_state,
            Duration::from_secs(5),
            "the failing key is Unknown",
            |s| s.status() == Status::Unknown,
        )
        .await;
        writer
            .controller("healthy")
            .unwrap()
            .increment(None)
            .await
            .unwrap();
        let healthy = reader.state("healthy").unwrap();
        eventually(
            &healthy,
            PROPAGATION_LIMIT,
            "the healthy key stays known",
            |s| s.status() == Status::Blocked,
        )
        .await;
        async_io::Timer::after(Duration::from_secs(3)).await;
        let attempts = sick.attempts.load(Ordering::Relaxed) - before;
        assert!(
            attempts <= 15,
            "{attempts} resubscriptions to the failing key in 3 s: no backoff"
        );
        assert_eq!(healthy.status(), Status::Blocked);
        assert_eq!(sick_state.status(), Status::Unknown);
        reader.shutdown().await;
        writer.shutdown().await;
    });
}

/// Item: a subscriber dropped as stalled sees an error status, so a .NET client (which
/// resubscribes only after an error) resubscribes.
#[test]
fn a_stalled_subscriber_is_ended_with_an_error() {
    let mut limits = HubLimits::default();
    limits.subscriber_buffer = 4;
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    rt().block_on(async {
        let mut stalled = raw_subscribe(&hub.url).await;
        stalled.message().await.unwrap().expect("the current state");
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        // 6 MB of notifications: more than the client's stream window and the hub's
        // buffers hold, so the hub sees the subscriber stall.
        for i in 0..400 {
            let data = Some(format!("v{i}-{}", "x".repeat(15_000)));
            client
                .set_status(request("writer", i % 2 == 0, data))
                .await
                .unwrap();
        }
        let end = within(Duration::from_secs(10), "the stalled stream ends", async {
            let mut read = 0;
            loop {
                match stalled.message().await {
                    Ok(Some(_)) => read += 1,
                    Ok(None) => return Ok(read),
                    Err(status) => return Err((read, status)),
                }
            }
        })
        .await;
        match end {
            Err((_, status)) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                assert!(status.message().contains("subscriber_buffer"), "{status}");
            }
            Ok(read) => panic!("ended with status OK after {read} notifications"),
        }
    });
}

/// Item: the latest sequence wins also when two publishes of one instance run out of order.
#[test]
fn publishes_polled_out_of_order_keep_the_latest_sequence() {
    let hub = HubServer::start();
    block_on(async {
        let backend = GrpcBackend::connect([hub.url.clone()]).await.unwrap();
        let validity = Duration::from_secs(60);
        let busy = InstanceStatus::busy(Some("old".into()), 1, validity);
        let idle = InstanceStatus::idle(2, validity);
        let older = backend.publish(KEY, "me", &busy);
        let newer = backend.publish(KEY, "me", &idle);
        newer.await.unwrap();
        older.await.unwrap();
        let snapshot = backend.snapshot(KEY).await.unwrap();
        let me = snapshot
            .entries
            .iter()
            .find(|e| e.instance == "me")
            .unwrap();
        assert!(!me.busy, "seq 2 (idle) wins over seq 1 (busy): {me:?}");
    });
}

/// Decided: a client that opens a subscription and never sends its first message is ended
/// after a bound instead of holding a hub task forever.
#[test]
fn a_subscription_without_a_first_message_times_out() {
    let mut limits = HubLimits::default();
    limits.first_message_timeout = Duration::from_millis(300);
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    rt().block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let started = Instant::now();
        let silent = futures_lite::stream::pending::<LockStatusRequest>();
        let answer = within(
            Duration::from_secs(5),
            "the hub ends a subscription with no first message",
            client.subscribe_lock_status(silent),
        )
        .await;
        let status = answer.expect_err("an error status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
        eprintln!("no first message: ended after {:?}", started.elapsed());
    });
}

/// A status of `key` for instance `i`, valid for `valid`.
fn status_of(key: &str, busy: bool, valid: Duration) -> tonic::Request<LockStatusRequest> {
    tonic::Request::new(LockStatusRequest {
        lock_key: key.into(),
        instance_id: "i".into(),
        is_busy: busy,
        lock_data: None,
        valid_until: Some(valid_for(valid)),
    })
}

#[test]
fn the_hub_forgets_idle_keys_so_max_keys_bounds_keys_in_use() {
    let rt = rt();
    rt.block_on(async {
        let mut limits = HubLimits::default();
        limits.forget_idle_keys_after = Duration::from_millis(200);
        let hub = Hub::new(limits);
        let max = limits.max_keys;
        // Twice max_keys distinct keys, each set busy then idle, in four waves: the keys of
        // a wave are idle and expired by the wave after the next, and make room for it.
        for wave in 0..4 {
            for i in 0..max / 2 {
                let key = format!("key-{wave}-{i}");
                let valid = Duration::from_millis(100);
                hub.set_status(status_of(&key, true, valid)).await.unwrap();
                hub.set_status(status_of(&key, false, valid)).await.unwrap();
            }
            assert!(hub.key_count() <= max, "wave {wave}: {}", hub.key_count());
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        // A key in use (an entry still valid) is never forgotten.
        let busy = "in-use";
        hub.set_status(status_of(busy, true, Duration::from_secs(60)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        hub.forget_idle_keys_now();
        assert_eq!(hub.key_count(), 1, "only the busy key is held");
        assert_eq!(hub.subscriber_count(busy), 0);
        // And a new key still works.
        hub.set_status(status_of("new", true, Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(hub.key_count(), 2);
    });
}

/// Instances that come and go under new names (restarts, autoscaling) do not fill a key:
/// the idle entry of an instance not heard from for `forget_idle_keys_after`, and whose
/// validity passed that long ago, is forgotten when `max_instances_per_key` is reached, so
/// a new instance is taken; a busy entry is never forgotten.
#[test]
fn departed_instances_make_room_for_new_ones() {
    let rt = rt();
    let mut limits = HubLimits::default();
    limits.max_instances_per_key = 3;
    limits.forget_idle_keys_after = Duration::from_millis(300);
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    rt.block_on(async {
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        client
            .set_status(request("busy-one", true, None))
            .await
            .unwrap();
        for gone in ["gone-1", "gone-2"] {
            let mut last = request(gone, false, None);
            last.valid_until = Some(valid_for(Duration::from_millis(100)));
            client.set_status(last).await.unwrap();
        }
        // Full, and nobody has left yet: refused.
        let refused = client.set_status(request("new-1", true, None)).await;
        assert_eq!(refused.unwrap_err().code(), tonic::Code::ResourceExhausted);
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The departed idle instances make room; the busy one stays.
        client
            .set_status(request("new-1", true, None))
            .await
            .unwrap();
        client
            .set_status(request("new-2", false, None))
            .await
            .unwrap();
        let mut stream = raw_subscribe(&hub.url).await;
        let current = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("the current state")
            .unwrap()
            .unwrap();
        let mut held: Vec<&str> = current
            .instances_status
            .keys()
            .map(String::as_str)
            .collect();
        held.sort_unstable();
        assert_eq!(held, ["busy-one", "new-1", "new-2"]);
    });
}
