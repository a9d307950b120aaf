//! Wire compatibility with .NET ReactiveLockGrpc clients (a client built from the proto
//! alone), bad input, TLS and bearer tokens, a stalled subscriber, a killed instance.
#![cfg(feature = "grpc-server")]

use std::time::{Duration, SystemTime};

use futures_lite::future::block_on;
use reactive_lock::{BackendErrorKind, ReactiveLock, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually, settles_to};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::proto::{LockStatusNotification, LockStatusRequest};
use reactive_lock_backends::grpc::server::{Hub, HubLimits, HubTls};
use reactive_lock_backends::testing::tokio_runtime as rt;
use reactive_lock_backends::testing::valid_for;
use reactive_lock_backends::testing::{GrpcFactory, HubServer};

const KEY: &str = "payments";

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(GrpcBackend::connect([url]).await.unwrap())
        .await
        .unwrap()
}

fn request(
    key: &str,
    instance: &str,
    busy: bool,
    data: Option<&str>,
    until: Option<Duration>,
) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: key.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: data.map(String::from),
        valid_until: until.map(valid_for),
    }
}

/// Subscribes like the .NET client: the first message names the key and the subscriber.
async fn raw_subscribe(url: &str, key: &str) -> tonic::Streaming<LockStatusNotification> {
    let mut client = ReactiveLockGrpcClient::connect(url.to_string())
        .await
        .unwrap();
    let first = request(key, "dotnet-reader", false, None, None);
    let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
    client
        .subscribe_lock_status(requests)
        .await
        .unwrap()
        .into_inner()
}

use futures_lite::StreamExt;

/// A subscription opened as instance "me", with or without the skip-own header; its first
/// message (the current state) read.
async fn subscribe_as_me(url: &str, skip_own: bool) -> tonic::Streaming<LockStatusNotification> {
    let mut client = ReactiveLockGrpcClient::connect(url.to_string())
        .await
        .unwrap();
    let first = request(KEY, "me", false, None, None);
    let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
    let mut request = tonic::Request::new(requests);
    if skip_own {
        request.metadata_mut().insert(
            reactive_lock_backends::grpc::SKIP_OWN_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    let mut stream = client
        .subscribe_lock_status(request)
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("the current state");
    stream
}

#[test]
fn own_changes_are_not_sent_to_a_subscription_that_asks_to_skip_them() {
    let hub = HubServer::start();
    rt().block_on(async {
        let mut skipping = subscribe_as_me(&hub.url, true).await;
        let mut dotnet = subscribe_as_me(&hub.url, false).await;
        let mut client = ReactiveLockGrpcClient::connect(hub.url.clone())
            .await
            .unwrap();
        let busy =
            |m: &LockStatusNotification, who: &str| m.instances_status.get(who).map(|s| s.is_busy);
        // "me" turns busy (valid for 1 s, so the hub expires it below), then "other".
        let me = request(KEY, "me", true, None, Some(Duration::from_secs(1)));
        client.set_status(me).await.unwrap();
        let other = request(KEY, "other", true, None, Some(Duration::from_secs(60)));
        client.set_status(other).await.unwrap();

        // Without the header (as .NET clients subscribe): every change, its own included.
        let first = dotnet.message().await.unwrap().unwrap();
        assert_eq!(
            (busy(&first, "me"), busy(&first, "other")),
            (Some(true), None)
        );
        let second = dotnet.message().await.unwrap().unwrap();
        assert_eq!(busy(&second, "other"), Some(true));

        // With it: the first message after the current state is the other instance's change
        // (it carries "me"'s entry as well); "me"'s own change was never sent.
        let first = skipping.message().await.unwrap().unwrap();
        assert_eq!(
            (busy(&first, "me"), busy(&first, "other")),
            (Some(true), Some(true))
        );
        // A change the hub makes itself (expiry of "me"'s entry) goes to every subscriber.
        let expired = skipping.message().await.unwrap().unwrap();
        assert_eq!(
            (busy(&expired, "me"), busy(&expired, "other")),
            (Some(false), Some(true))
        );
        let expired = dotnet.message().await.unwrap().unwrap();
        assert_eq!(busy(&expired, "me"), Some(false));
    });
}

#[test]
fn reads_through_to_the_hub_leave_no_subscription_behind() {
    let hub = HubServer::start();
    block_on(async {
        let reader = instance(&hub.url, "reader").await;
        let state = reader.state(KEY).unwrap();
        // Each consistent read opens a stream for one snapshot. 300 is beyond h2's default
        // limit of concurrent streams per connection, which leaked streams would exhaust.
        for _ in 0..300 {
            assert!(!state.wait_if_blocked_consistent().await.unwrap());
        }
        // What stays is the registry's own subscription; every read's stream is closed.
        await_subscriber_count(&hub.hub, KEY, 1, "subscriptions left on the hub").await;
        reader.shutdown().await;
    });
}

/// Waits up to `PROPAGATION_LIMIT` for the hub to send `key`'s changes to `expected`
/// subscription streams.
async fn await_subscriber_count(hub: &Hub, key: &str, expected: usize, what: &str) {
    settles_to(PROPAGATION_LIMIT, what, expected, || {
        hub.subscriber_count(key)
    })
    .await;
}

#[test]
fn a_registry_shut_down_or_dropped_ends_its_subscriptions() {
    let hub = HubServer::start();
    block_on(async {
        let lock = instance(&hub.url, "leaving").await;
        await_subscriber_count(&hub.hub, KEY, 1, "the registry's subscription").await;
        // A controller handle outlives the registry (it keeps the backend alive): the
        // subscription still ends with the shutdown.
        let ctrl = lock.controller(KEY).unwrap();
        lock.shutdown().await;
        drop(lock);
        await_subscriber_count(&hub.hub, KEY, 0, "after shutdown, a controller alive").await;
        drop(ctrl);

        // Dropped without shutdown (looks like a crash to the others): the streams end too.
        let lock = instance(&hub.url, "crashing").await;
        await_subscriber_count(&hub.hub, KEY, 1, "the second registry's subscription").await;
        drop(lock);
        await_subscriber_count(&hub.hub, KEY, 0, "after a drop without shutdown").await;
    });
}

#[test]
fn dotnet_client_and_ours_understand_each_other() {
    let hub = HubServer::start();
    let rt = rt();
    block_on(async {
        let ours = instance(&hub.url, "rust-1").await;
        let state = ours.state(KEY).unwrap();

        // A .NET-style SetStatus: validUntil = now + 10 s as Timestamp, lockData as StringValue.
        let url = hub.url.clone();
        rt.spawn(async move {
            let mut client = ReactiveLockGrpcClient::connect(url).await.unwrap();
            client
                .set_status(request(
                    KEY,
                    "dotnet-1",
                    true,
                    Some("x"),
                    Some(Duration::from_secs(10)),
                ))
                .await
                .unwrap();
        })
        .await
        .unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "blocked by the .NET client",
            |s| s.is_blocked() && s.lock_data().as_deref() == Some("x"),
        )
        .await;

        // Our messages, seen by a raw client: fields as .NET expects them.
        let url = hub.url.clone();
        let seen = rt.spawn(async move {
            let mut stream = raw_subscribe(&url, KEY).await;
            loop {
                let n = stream.message().await.unwrap().unwrap();
                if let Some(ours) = n.instances_status.get("rust-1")
                    && ours.is_busy
                {
                    return (n.lock_key.clone(), ours.clone());
                }
            }
        });
        ours.controller(KEY)
            .unwrap()
            .increment(Some("batch-7"))
            .await
            .unwrap();
        let (key, status) = seen.await.unwrap();
        assert_eq!(key, KEY);
        assert_eq!(status.lock_data.as_deref(), Some("batch-7"));
        let until = status.valid_until.expect("validUntil set");
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (until.seconds - now - 10).abs() <= 2,
            "validUntil ≈ now + 10 s: {until:?}"
        );
        ours.shutdown().await;
    });
}

#[test]
fn bad_input_gets_clear_errors_and_the_hub_keeps_serving() {
    let mut limits = HubLimits::default();
    limits.max_keys = 5;
    limits.max_lock_data_len = 100;
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    let rt = rt();
    let url = hub.url.clone();
    rt.block_on(async move {
        let mut client = ReactiveLockGrpcClient::connect(url.clone()).await.unwrap();
        let big = "d".repeat(200);
        let err = client
            .set_status(request(
                KEY,
                "i",
                true,
                Some(&big),
                Some(Duration::from_secs(5)),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("max_lock_data_len"), "{err}");
        let err = client
            .set_status(request("", "i", true, None, None))
            .await
            .unwrap_err();
        assert!(
            err.code() == tonic::Code::InvalidArgument && err.message().contains("lockKey"),
            "{err}"
        );
        let err = client
            .set_status(request(KEY, "", true, None, None))
            .await
            .unwrap_err();
        assert!(
            err.code() == tonic::Code::InvalidArgument && err.message().contains("instanceId"),
            "{err}"
        );
        let huge = "m".repeat(100_000);
        let err = client
            .set_status(request(&huge, "i", true, None, None))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.code(),
                tonic::Code::OutOfRange
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::InvalidArgument
            ),
            "{err}"
        );
        let mut last = None;
        for i in 0..20 {
            if let Err(e) = client
                .set_status(request(&format!("k{i}"), "i", false, None, None))
                .await
            {
                last = Some(e);
            }
        }
        let err = last.expect("a flood of keys hits max_keys");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("max_keys"), "{err}");
        // Still serving.
        client
            .set_status(request(
                "k0",
                "i",
                true,
                Some("fine"),
                Some(Duration::from_secs(5)),
            ))
            .await
            .unwrap();
    });
    // Through the backend: refusals are Rejected errors naming the limit.
    block_on(async {
        let err = ReactiveLock::builder()
            .tracker("one-too-many", TrackerConfig::new())
            .build(GrpcBackend::connect([hub.url.as_str()]).await.unwrap())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("max_keys") && err.to_string().contains("Rejected"),
            "{err}"
        );
        let lock = ReactiveLock::builder()
            .tracker("k0", TrackerConfig::new())
            .build(GrpcBackend::connect([hub.url.as_str()]).await.unwrap())
            .await
            .unwrap();
        let err = lock
            .controller("k0")
            .unwrap()
            .increment(Some(&"d".repeat(200)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("max_lock_data_len"), "{err}");
        lock.shutdown().await;
    });
}

#[test]
fn tls_and_token() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = certified.cert.pem();
    let key = certified.signing_key.serialize_pem();
    let hub = HubServer::start_with(
        Hub::default(),
        Some(HubTls::from_pem(cert.clone(), key)),
        Some("s3cret".into()),
    );
    assert!(hub.url.starts_with("https://"));
    block_on(async {
        // Connecting only opens the channel; the first call without the token is refused.
        let backend = GrpcBackend::builder([hub.url.clone()])
            .tls_root_cert(cert.clone())
            .connect()
            .await
            .unwrap();
        let e = ReactiveLock::builder()
            .tracker(KEY, TrackerConfig::new())
            .build(backend)
            .await
            .expect_err("no token");
        assert!(
            e.to_string().contains("bearer token") && e.to_string().contains("Rejected"),
            "{e}"
        );
        let with = |name: &str| {
            let url = hub.url.clone();
            let cert = cert.clone();
            let name = name.to_string();
            async move {
                let backend = GrpcBackend::builder([url])
                    .tls_root_cert(cert)
                    .token("s3cret")
                    .connect()
                    .await
                    .unwrap();
                ReactiveLock::builder()
                    .instance_name(name)
                    .tracker(KEY, TrackerConfig::new())
                    .build(backend)
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (with("a").await, with("b").await);
        a.controller(KEY)
            .unwrap()
            .increment(Some("tls"))
            .await
            .unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "propagates over TLS with the token",
            |s| s.lock_data().as_deref() == Some("tls"),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
    // A raw client without the token: Unauthenticated.
    rt().block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(cert));
        let channel = tonic::transport::Endpoint::from_shared(hub.url.clone())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let err = ReactiveLockGrpcClient::new(channel)
            .set_status(request(KEY, "x", false, None, None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    });
}

#[test]
fn a_stalled_subscriber_does_not_block_the_hub_or_others() {
    let mut limits = HubLimits::default();
    limits.subscriber_buffer = 4;
    let hub = HubServer::start_with(Hub::new(limits), None, None);
    let rt = rt();
    // Subscribes and never reads again.
    let url = hub.url.clone();
    let mut stalled = rt.block_on(async move { raw_subscribe(&url, KEY).await });
    block_on(async {
        let a = instance(&hub.url, "a").await;
        let b = instance(&hub.url, "b").await;
        let ctrl = a.controller(KEY).unwrap();
        // Large lock data, so the unread notifications fill the HTTP/2 windows and the
        // hub's send buffer (a few MiB), and then the subscriber's own buffer.
        let padding = "x".repeat(15_000);
        for i in 0..400 {
            ctrl.increment(Some(&format!("v{i}{padding}")))
                .await
                .unwrap();
            ctrl.decrement(1).await.unwrap();
        }
        ctrl.increment(Some("last")).await.unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "b keeps receiving",
            |s| s.lock_data().as_deref() == Some("last"),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
    // The stalled subscriber was dropped: what it finally reads is what the windows and
    // buffers held, then the hub's resource-exhausted end, not all 800 changes.
    let (read, end) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut read = 0;
            loop {
                match stalled.message().await {
                    Ok(Some(_)) => read += 1,
                    Ok(None) => return (read, None),
                    Err(status) => return (read, Some(status.code())),
                }
            }
        })
        .await
        .expect("the stalled stream ends")
    });
    assert_eq!(end, Some(tonic::Code::ResourceExhausted), "read {read}");
    assert!(read < 800, "read {read}");
}

#[test]
fn connect_errors_name_the_hubs() {
    block_on(async {
        let err = GrpcBackend::builder(["http://127.0.0.1:1"])
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Unavailable);
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        let err = GrpcBackend::connect(["not a url"]).await.unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected);
        let err = GrpcBackend::connect(Vec::<String>::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected);
    });
}

/// h2 ends a connection after a budget of small DATA frames (every notification of a
/// long-lived subscription is one); with the default window that is ~17,000 notifications.
/// 20,000 transitions must pass with no disconnect.
#[test]
fn twenty_thousand_notifications_on_one_connection() {
    let hub = HubServer::start();
    block_on(async {
        let a = instance(&hub.url, "a").await;
        let b = instance(&hub.url, "b").await;
        let ctrl = a.controller(KEY).unwrap();
        for _ in 0..10_000 {
            ctrl.increment(Some("flip")).await.unwrap();
            ctrl.decrement(1).await.unwrap();
        }
        ctrl.increment(Some("end")).await.unwrap();
        eventually(
            &b.state(KEY).unwrap(),
            PROPAGATION_LIMIT,
            "b ends on the newest status",
            |s| s.lock_data().as_deref() == Some("end"),
        )
        .await;
        for lock in [&a, &b] {
            let m = lock.metrics();
            assert_eq!(
                (m.disconnects, m.resyncs),
                (0, 0),
                "no connection lost: {m:?}"
            );
        }
        a.shutdown().await;
        b.shutdown().await;
    });
}

#[test]
fn statuses_streamed_after_the_first_message_are_applied() {
    let hub = HubServer::start();
    let rt = rt();
    block_on(async {
        let ours = instance(&hub.url, "rust-1").await;
        let state = ours.state(KEY).unwrap();
        let url = hub.url.clone();
        // A .NET-style subscriber that then sends its own status on the same stream.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(async move {
            let mut client = ReactiveLockGrpcClient::connect(url).await.unwrap();
            tx.send(request(KEY, "dotnet-2", false, None, None))
                .unwrap();
            tx.send(request(
                KEY,
                "dotnet-2",
                true,
                Some("streamed"),
                Some(Duration::from_secs(10)),
            ))
            .unwrap();
            let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
            let mut stream = client
                .subscribe_lock_status(requests)
                .await
                .unwrap()
                .into_inner();
            // Keep the request stream (and so the subscription) open while reading.
            let _open = &tx;
            while stream.message().await.is_ok_and(|m| m.is_some()) {}
        });
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "the streamed status blocks",
            |s| s.lock_data().as_deref() == Some("streamed"),
        )
        .await;
        ours.shutdown().await;
    });
}

/// The suite's first scenario inside whatever runtime calls it.
async fn propagation(factory: impl reactive_lock_backends::conformance::BackendFactory) {
    reactive_lock_backends::conformance::busy_blocks_others(&factory).await;
}

#[test]
fn works_inside_tokio_current_thread() {
    let hub = HubServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(propagation(GrpcFactory(vec![hub.url.clone()])));
}

#[test]
fn works_inside_async_std_and_smol() {
    let hub = HubServer::start();
    async_std::task::block_on(propagation(GrpcFactory(vec![hub.url.clone()])));
    smol::block_on(propagation(GrpcFactory(vec![hub.url.clone()])));
}

#[test]
fn failed_connect_inside_tokio_does_not_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = GrpcBackend::builder(["http://127.0.0.1:1"])
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await;
        assert!(err.is_err());
    });
}

#[test]
fn runs_on_the_applications_runtime() {
    let hub = HubServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks_before = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let mut locks = Vec::new();
        for name in ["a", "b"] {
            let backend = GrpcBackend::builder([hub.url.clone()])
                .runtime(tokio::runtime::Handle::current())
                .connect()
                .await
                .unwrap();
            let (lock, driver) = ReactiveLock::builder()
                .instance_name(name)
                .tracker(KEY, TrackerConfig::new())
                .build_with_driver(backend)
                .await
                .unwrap();
            tokio::spawn(driver);
            locks.push(lock);
        }
        // The backends' subscription tasks live on this runtime, not on one of their own.
        assert!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > tasks_before + 2,
            "subscription tasks on the application's runtime"
        );
        let (a, b) = (&locks[0], &locks[1]);
        let ctrl = a.controller(KEY).unwrap();
        let b_state = b.state(KEY).unwrap();
        ctrl.increment(Some("on-app-runtime")).await.unwrap();
        eventually(&b_state, PROPAGATION_LIMIT, "b sees a busy", |s| {
            s.lock_data().as_deref() == Some("on-app-runtime")
        })
        .await;
        ctrl.decrement(1).await.unwrap();
        eventually(&b_state, PROPAGATION_LIMIT, "b sees a idle", |s| {
            !s.is_blocked()
        })
        .await;
        // A call made from a task on the backend's runtime runs in that task: polled once,
        // the publish is under way (waiting for the hub) and no task was spawned for it.
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        let mut ack = ctrl.increment(Some("in-place"));
        assert!(
            futures_lite::future::poll_once(&mut ack).await.is_none(),
            "the acknowledgement waits for the hub"
        );
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks,
            "no task per call"
        );
        ack.await.unwrap();
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// The driver runs on the backend's own runtime (`Backend::spawn_driver`); when a registry
/// is dropped without `shutdown`, the driver ends there and may drop the last handle to
/// that runtime from one of its own workers — which must not panic.
#[test]
fn a_dropped_registry_ends_its_driver_on_the_backends_runtime_without_panicking() {
    // The panic hook is process-wide: the check runs alone in a child process of this test
    // binary, so other tests' panics can neither fail nor pass it.
    const CHILD: &str = "REACTIVE_LOCK_TEST_PANIC_CHILD";
    const NAME: &str =
        "a_dropped_registry_ends_its_driver_on_the_backends_runtime_without_panicking";
    if std::env::var_os(CHILD).is_none() {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "the check in its own process: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        return;
    }
    static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
    let hub = HubServer::start();
    block_on(async {
        for name in ["x", "y", "z"] {
            let lock = instance(&hub.url, name).await;
            lock.controller(KEY).unwrap().increment(None).await.unwrap();
            let metrics = lock.metrics();
            drop(lock);
            assert!(metrics.publishes >= 1);
        }
        // The drivers notice the drops and end; give them the time to do so.
        async_io::Timer::after(Duration::from_millis(500)).await;
    });
    assert_eq!(PANICS.load(std::sync::atomic::Ordering::SeqCst), 0);
}
