//! Wire compatibility with the .NET ReactiveLockGrpc protocol, checked against the .NET
//! definition itself rather than against our generated types:
//!
//! * messages declared by hand below from the .NET `ReactiveLockGrpc.proto` (both `lockData`
//!   fields are `google.protobuf.StringValue`, `validUntil` a `google.protobuf.Timestamp`)
//!   read and write our hub over a real socket;
//! * a second gRPC implementation — Python grpcio, generated from
//!   `tests/dotnet_wire/ReactiveLockGrpc.proto`, written from the .NET file — acts as a .NET
//!   client against our hub, and as a hub that encodes the .NET way for our `GrpcBackend`.
//!
//! The Python peer needs `python3` with grpcio-tools (`pip install grpcio-tools`; CI's
//! `.ci/setup.sh` installs it). Without it these tests fail, naming what is missing.
#![cfg(feature = "grpc-server")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use futures_lite::future::block_on;
use reactive_lock::{ReactiveLock, TrackerConfig};
use reactive_lock_backends::conformance::{PROPAGATION_LIMIT, eventually};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::testing::HubServer;
use reactive_lock_backends::testing::tokio_runtime as rt;
use tonic::codegen::http::uri::PathAndQuery;

const KEY: &str = "payments";

/// `google.protobuf.StringValue`.
#[derive(Clone, PartialEq, prost::Message)]
struct StringValue {
    #[prost(string, tag = "1")]
    value: String,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// `google.protobuf.Empty`.
#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

/// .NET `LockStatusRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct DotnetRequest {
    #[prost(string, tag = "1")]
    lock_key: String,
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(bool, tag = "3")]
    is_busy: bool,
    #[prost(message, optional, tag = "4")]
    lock_data: Option<StringValue>,
    #[prost(message, optional, tag = "5")]
    valid_until: Option<Timestamp>,
}

/// .NET `InstanceLockStatus`: `lockData` is a `StringValue` here too.
#[derive(Clone, PartialEq, prost::Message)]
struct DotnetStatus {
    #[prost(bool, tag = "1")]
    is_busy: bool,
    #[prost(message, optional, tag = "2")]
    lock_data: Option<StringValue>,
    #[prost(message, optional, tag = "3")]
    valid_until: Option<Timestamp>,
}

/// .NET `LockStatusNotification`.
#[derive(Clone, PartialEq, prost::Message)]
struct DotnetNotification {
    #[prost(string, tag = "1")]
    lock_key: String,
    #[prost(map = "string, message", tag = "2")]
    instances_status: HashMap<String, DotnetStatus>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn dotnet_request(instance: &str, busy: bool, data: Option<&str>) -> DotnetRequest {
    DotnetRequest {
        lock_key: KEY.into(),
        instance_id: instance.into(),
        is_busy: busy,
        lock_data: data.map(|value| StringValue {
            value: value.into(),
        }),
        valid_until: Some(Timestamp {
            seconds: unix_now() + 10,
            nanos: 250_000_000,
        }),
    }
}

async fn raw_client(url: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// `SetStatus` with the hand-declared .NET messages; the reply must decode as `Empty`.
async fn dotnet_set_status(url: &str, request: DotnetRequest) {
    let mut grpc = raw_client(url).await;
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<DotnetRequest, Empty>::default();
    let reply = grpc
        .unary(
            tonic::Request::new(request),
            PathAndQuery::from_static("/ReactiveLockGrpc/SetStatus"),
            codec,
        )
        .await
        .expect("SetStatus accepted");
    assert_eq!(reply.into_inner(), Empty {});
}

/// `SubscribeLockStatus` as a .NET client opens it, decoding with the hand-declared messages.
async fn dotnet_subscribe(url: &str) -> tonic::Streaming<DotnetNotification> {
    let mut grpc = raw_client(url).await;
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<DotnetRequest, DotnetNotification>::default();
    let first = DotnetRequest {
        lock_key: KEY.into(),
        instance_id: "dotnet-reader".into(),
        ..Default::default()
    };
    let requests = futures_lite::stream::once(first).chain(futures_lite::stream::pending());
    grpc.streaming(
        tonic::Request::new(requests),
        PathAndQuery::from_static("/ReactiveLockGrpc/SubscribeLockStatus"),
        codec,
    )
    .await
    .expect("subscribed")
    .into_inner()
}

async fn instance(url: &str, name: &str) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .tracker(KEY, TrackerConfig::new())
        .build(GrpcBackend::connect([url]).await.unwrap())
        .await
        .unwrap()
}

#[test]
fn our_hubs_notifications_decode_with_the_dotnet_messages() {
    let hub = HubServer::start();
    let rt = rt();
    let url = hub.url.clone();
    let notification = rt.block_on(async move {
        let ours = instance(&url, "rust-1").await;
        ours.controller(KEY)
            .unwrap()
            .increment(Some("batch-7"))
            .await
            .unwrap();
        dotnet_set_status(&url, dotnet_request("dotnet-none", true, None)).await;
        dotnet_set_status(&url, dotnet_request("dotnet-empty", true, Some(""))).await;
        dotnet_set_status(&url, dotnet_request("dotnet-data", true, Some("x"))).await;
        // A new subscriber gets the key's full state first.
        let mut stream = dotnet_subscribe(&url).await;
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a notification in time")
            .expect("decodes as the .NET LockStatusNotification")
            .expect("one notification");
        ours.shutdown().await;
        first
    });
    assert_eq!(notification.lock_key, KEY);
    let mut instances: Vec<&str> = notification
        .instances_status
        .keys()
        .map(String::as_str)
        .collect();
    instances.sort_unstable();
    assert_eq!(
        instances,
        ["dotnet-data", "dotnet-empty", "dotnet-none", "rust-1"],
        "map keys are the instance ids"
    );
    let data = |instance: &str| {
        notification.instances_status[instance]
            .lock_data
            .as_ref()
            .map(|v| v.value.as_str())
    };
    assert_eq!(data("dotnet-data"), Some("x"));
    assert_eq!(
        data("dotnet-empty"),
        Some(""),
        "present and empty stays \"\""
    );
    assert_eq!(data("dotnet-none"), None, "absent stays absent (null)");
    assert_eq!(data("rust-1"), Some("batch-7"));
    for (instance, status) in &notification.instances_status {
        assert!(status.is_busy, "{instance} busy");
        let until = status.valid_until.as_ref().expect("validUntil set");
        assert!(
            (until.seconds - unix_now() - 10).abs() <= 2,
            "{instance}: validUntil ≈ now + 10 s: {until:?}"
        );
        assert!(
            (0..1_000_000_000).contains(&until.nanos),
            "{instance}: nanos in range: {until:?}"
        );
    }
    assert_eq!(
        notification.instances_status["dotnet-data"]
            .valid_until
            .as_ref()
            .unwrap()
            .nanos,
        250_000_000,
        "a .NET client's validUntil is kept to the nanosecond"
    );
}

/// The Python peer script, with a clear failure when Python or grpcio is missing.
fn python_peer(args: &[&str]) -> Command {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/dotnet_wire/dotnet_peer.py"
    );
    let mut command = Command::new("python3");
    command.arg(script).args(args);
    command
}

/// A hub that encodes the .NET way (Python grpcio), stopped on drop.
struct PythonHub {
    url: String,
    child: Child,
}

impl PythonHub {
    fn start() -> Self {
        let mut child = python_peer(&["hub"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be on PATH for the .NET wire tests");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(port) = line.trim().strip_prefix("PORT ") else {
            let status = child.wait().unwrap();
            panic!(
                "the Python .NET-protocol hub did not start ({status}); it needs grpcio-tools: \
                 pip install grpcio-tools"
            );
        };
        PythonHub {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }
}

impl Drop for PythonHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn our_backend_reads_a_hub_that_encodes_the_dotnet_way() {
    let hub = PythonHub::start();
    let rt = rt();
    block_on(async {
        let reader = instance(&hub.url, "rust-reader").await;
        let state = reader.state(KEY).unwrap();
        let url = hub.url.clone();
        rt.spawn(async move {
            dotnet_set_status(&url, dotnet_request("dotnet-data", true, Some("x"))).await;
        })
        .await
        .unwrap();
        eventually(&state, PROPAGATION_LIMIT, "\"x\" read as \"x\"", |s| {
            s.is_blocked() && s.lock_data_entries() == ["x"]
        })
        .await;

        // Our own writer through the .NET-encoding hub: its StringValue comes back intact.
        let writer = instance(&hub.url, "rust-writer").await;
        writer
            .controller(KEY)
            .unwrap()
            .increment(Some("batch-7"))
            .await
            .unwrap();
        eventually(&state, PROPAGATION_LIMIT, "both lock data entries", |s| {
            let mut entries = s.lock_data_entries();
            entries.sort();
            entries == ["batch-7", "x"]
        })
        .await;

        // Empty and absent lock data: busy, and no lock data entry, as .NET reads them.
        let url = hub.url.clone();
        rt.spawn(async move {
            dotnet_set_status(&url, dotnet_request("dotnet-data", false, None)).await;
            dotnet_set_status(&url, dotnet_request("dotnet-empty", true, Some(""))).await;
        })
        .await
        .unwrap();
        writer.controller(KEY).unwrap().decrement(1).await.unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "blocked by empty lock data",
            |s| s.is_blocked() && s.lock_data_entries().is_empty() && s.lock_data().is_none(),
        )
        .await;
        let url = hub.url.clone();
        rt.spawn(async move {
            dotnet_set_status(&url, dotnet_request("dotnet-empty", false, None)).await;
            dotnet_set_status(&url, dotnet_request("dotnet-none", true, None)).await;
        })
        .await
        .unwrap();
        eventually(
            &state,
            PROPAGATION_LIMIT,
            "blocked without lock data",
            |s| s.is_blocked() && s.lock_data_entries().is_empty(),
        )
        .await;
        let url = hub.url.clone();
        rt.spawn(async move {
            dotnet_set_status(&url, dotnet_request("dotnet-none", false, None)).await;
        })
        .await
        .unwrap();
        eventually(&state, PROPAGATION_LIMIT, "unblocked", |s| !s.is_blocked()).await;
        writer.shutdown().await;
        reader.shutdown().await;
    });
}

#[test]
fn a_grpcio_client_built_from_the_dotnet_proto_reads_our_hub() {
    let hub = HubServer::start();
    let ours = block_on(async {
        let ours = instance(&hub.url, "rust-1").await;
        ours.controller(KEY)
            .unwrap()
            .increment(Some("batch-7"))
            .await
            .unwrap();
        ours
    });
    let output = python_peer(&["client", &hub.url, KEY, "--expect", "rust-1=batch-7"])
        .output()
        .expect("python3 must be on PATH for the .NET wire tests");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the grpcio client disagrees with our hub ({}): {stderr}{stdout}",
        output.status
    );
    assert!(stdout.contains("\"ok\": true"), "{stdout}");
    block_on(ours.shutdown());
}
