//! gRPC: reactive-lock over an in-process hub beside raw tonic calls to the same hub.
//!
//! `taskset -c 0 cargo bench -p reactive-lock-benches --bench grpc`

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use reactive_lock_backends::grpc::proto::{LockStatusNotification, LockStatusRequest};
use reactive_lock_backends::testing::HubServer;
use reactive_lock_backends::testing::valid_for;
use reactive_lock_benches::{pair_with_drivers, propagation_pair, transition_ack_pair};

const KEY: &str = "bench";

fn request(key: &str, busy: bool) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: key.into(),
        instance_id: "raw".into(),
        is_busy: busy,
        lock_data: busy.then(|| "x".to_string()),
        valid_until: Some(valid_for(Duration::from_secs(10))),
    }
}

/// A raw .NET-style subscription to `key`, its first message (the current state) read.
async fn raw_subscription(
    mut client: ReactiveLockGrpcClient<tonic::transport::Channel>,
    key: &str,
    reader: &str,
) -> tonic::Streaming<LockStatusNotification> {
    let first = LockStatusRequest {
        lock_key: key.into(),
        instance_id: reader.into(),
        ..Default::default()
    };
    let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
    let mut stream = client
        .subscribe_lock_status(requests)
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap(); // the current state
    stream
}

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(GrpcBackend::connect([url]).await.expect("connect"))
        .await
        .expect("build")
}

/// A backend on the application's (the calling task's) tokio runtime.
async fn app_runtime_backend(url: &str) -> GrpcBackend {
    GrpcBackend::builder([url.to_string()])
        .runtime(tokio::runtime::Handle::current())
        .connect()
        .await
        .expect("connect")
}

fn grpc_benches(c: &mut Criterion) {
    let hub = HubServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut raw = rt
        .block_on(ReactiveLockGrpcClient::connect(hub.url.clone()))
        .unwrap();

    let mut group = c.benchmark_group("grpc");
    group.bench_function("raw_unary_pair", |b| {
        b.iter(|| {
            rt.block_on(async {
                raw.set_status(request("raw", true)).await.unwrap();
                raw.set_status(request("raw", false)).await.unwrap();
            })
        })
    });

    let mut stream = rt.block_on(raw_subscription(raw.clone(), "raw-stream", "reader"));
    group.bench_function("raw_stream_pair", |b| {
        b.iter(|| {
            rt.block_on(async {
                for busy in [true, false] {
                    raw.set_status(request("raw-stream", busy)).await.unwrap();
                    stream.message().await.unwrap().expect("notification");
                }
            })
        })
    });

    // One instance, as in the unary baseline nobody else listens to the key (the hub sends
    // an instance no echo of its own changes): on the backend's own runtime (the default),
    // then on the application's.
    let solo = block_on(instance(&hub.url, "solo"));
    let ctrl = solo.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair", |b| {
        b.iter(|| block_on(transition_ack_pair(&ctrl)))
    });
    block_on(solo.shutdown());
    drop(solo);
    let (solo, driver) = rt.block_on(async {
        ReactiveLock::builder()
            .instance_name("solo-app")
            .tracker(KEY, TrackerConfig::new())
            .build_with_driver(app_runtime_backend(&hub.url).await)
            .await
            .expect("build")
    });
    drop(rt.spawn(driver));
    let ctrl = solo.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair_app_runtime", |b| {
        b.iter(|| rt.block_on(transition_ack_pair(&ctrl)))
    });
    rt.block_on(solo.shutdown());
    drop(solo);

    // The unary pair again with two subscribers draining the key, as the two instances
    // below do (the hub fans each status out to both; their readers share the pinned CPU).
    let mut drains = Vec::new();
    for reader in ["drain-1", "drain-2"] {
        let url = hub.url.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        // Dropping `stop` ends the drain, so the hub can shut down gracefully at the end.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = ReactiveLockGrpcClient::connect(url).await.unwrap();
                let mut stream = raw_subscription(client, "raw", reader).await;
                ready_tx.send(()).unwrap();
                let drain = async { while let Ok(Some(_)) = stream.message().await {} };
                tokio::select! {
                    _ = drain => {}
                    _ = stopped => {}
                }
            })
        });
        ready_rx.recv().unwrap();
        drains.push((stop, thread));
    }
    group.bench_function("raw_unary_pair_2_subscribers", |b| {
        b.iter(|| {
            rt.block_on(async {
                raw.set_status(request("raw", true)).await.unwrap();
                raw.set_status(request("raw", false)).await.unwrap();
            })
        })
    });

    let (a, b_lock) =
        block_on(async { (instance(&hub.url, "a").await, instance(&hub.url, "b").await) });
    let ctrl = a.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair_2_instances", |b| {
        b.iter(|| block_on(transition_ack_pair(&ctrl)))
    });

    let state_b = b_lock.state(KEY).unwrap();
    let mut changes = state_b.changes();
    group.bench_function("propagation_pair", |b| {
        b.iter(|| block_on(propagation_pair(&ctrl, &state_b, &mut changes)))
    });
    block_on(async {
        a.shutdown().await;
        b_lock.shutdown().await;
    });

    // The same two instances on the application's tokio runtime (`GrpcBackendBuilder::runtime`,
    // drivers spawned there): the caller, the channels and the drivers share one thread, as
    // in the raw baselines.
    let (a, b_lock) = rt.block_on(pair_with_drivers(
        ["app-a", "app-b"],
        KEY,
        || app_runtime_backend(&hub.url),
        |driver| drop(tokio::spawn(driver)),
    ));
    let ctrl = a.controller(KEY).unwrap();
    group.bench_function("transition_ack_pair_2_instances_app_runtime", |b| {
        b.iter(|| rt.block_on(transition_ack_pair(&ctrl)))
    });
    let state_b = b_lock.state(KEY).unwrap();
    let mut changes = state_b.changes();
    group.bench_function("propagation_pair_app_runtime", |b| {
        b.iter(|| rt.block_on(propagation_pair(&ctrl, &state_b, &mut changes)))
    });
    group.finish();
    rt.block_on(async {
        a.shutdown().await;
        b_lock.shutdown().await;
    });
    for (stop, thread) in drains {
        drop(stop);
        thread.join().unwrap();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = grpc_benches
}
criterion_main!(benches);
