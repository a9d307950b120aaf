//! The tower layer against a real axum server over TCP and a real hyper-util client.
//!
//! Every wait here is reactive (a channel the handler signals on, `wait_if_blocked`), bounded
//! by a generous timeout so a regression fails instead of hanging; no test asserts a duration.

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reactive_lock::tower::InFlightLayer;
use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig, TrackerController, TrackerState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;

/// Bounds every wait: far beyond what any step needs, so only a hang trips it.
const BOUND: Duration = Duration::from_secs(20);

async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn unblocked(state: &TrackerState) {
    tokio::time::timeout(BOUND, state.wait_if_blocked())
        .await
        .expect("the key never unblocked: a request's count was not given back");
}

async fn entered(rx: &mut mpsc::UnboundedReceiver<()>) {
    tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("the handler never ran")
        .unwrap();
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get_body(url: &str) -> (http::StatusCode, Bytes) {
    let response = client()
        .request(
            http::Request::get(url)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// Two instances on one in-process store: the layer counts on `api-1`, `api-2` watches.
async fn two_instances() -> (ReactiveLock, ReactiveLock) {
    let backend = LocalBackend::new();
    let mut locks = Vec::new();
    for name in ["api-1", "api-2"] {
        locks.push(
            ReactiveLock::builder()
                .instance_name(name)
                .tracker("http", TrackerConfig::new())
                .build(backend.clone())
                .await
                .unwrap(),
        );
    }
    let second = locks.pop().unwrap();
    (locks.pop().unwrap(), second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handler_counts_one_then_zero_and_blocks_the_other_instance() {
    let (api1, api2) = two_instances().await;
    let ctrl = api1.controller("http").unwrap();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let release = std::sync::Arc::new(Notify::new());
    let handler_release = release.clone();
    let router = Router::new()
        .route(
            "/slow",
            get(move || {
                let entered_tx = entered_tx.clone();
                let release = handler_release.clone();
                async move {
                    entered_tx.send(()).unwrap();
                    release.notified().await;
                    "done"
                }
            }),
        )
        .layer(InFlightLayer::new(ctrl.clone()));
    let base = serve(router).await;

    assert_eq!(ctrl.count(), 0);
    let request = tokio::spawn(async move { get_body(&format!("{base}/slow")).await });
    entered(&mut entered_rx).await;
    assert_eq!(ctrl.count(), 1);
    let remote = api2.state("http").unwrap();
    // The other instance learns it through the store: wait until it sees the key blocked.
    tokio::time::timeout(BOUND, async {
        while !remote.is_blocked() {
            remote.refresh().await.unwrap();
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("api-2 never saw the request in flight on api-1");

    release.notify_one();
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"done");
    unblocked(ctrl.state()).await;
    unblocked(&remote).await;
    assert_eq!(ctrl.count(), 0);
    api1.shutdown().await;
    api2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_body_holds_the_count_until_its_end() {
    let ctrl = TrackerController::new(1).unwrap();
    let (chunks_tx, chunks_rx) = mpsc::unbounded_channel::<Result<Bytes, Infallible>>();
    let chunks_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(chunks_rx)));
    let router = Router::new()
        .route(
            "/stream",
            get(move || {
                let rx = chunks_rx.lock().unwrap().take().unwrap();
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|chunk| (chunk, rx))
                });
                async move { Body::from_stream(stream) }
            }),
        )
        .layer(InFlightLayer::new(ctrl.clone()));
    let base = serve(router).await;

    let response = client()
        .request(
            http::Request::get(format!("{base}/stream"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    chunks_tx.send(Ok(Bytes::from_static(b"first"))).unwrap();
    let frame = tokio::time::timeout(BOUND, body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&frame.into_data().unwrap()[..], b"first");
    // The handler has returned; the body is still being sent.
    assert_eq!(ctrl.count(), 1);
    assert!(ctrl.state().is_blocked());

    chunks_tx.send(Ok(Bytes::from_static(b"last"))).unwrap();
    drop(chunks_tx);
    let rest = tokio::time::timeout(BOUND, body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(&rest[..], b"last");
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_request_gives_the_count_back() {
    let ctrl = TrackerController::new(1).unwrap();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let router = Router::new()
        .route(
            "/hang",
            get(move || {
                let entered_tx = entered_tx.clone();
                async move {
                    entered_tx.send(()).unwrap();
                    // Never answers: only the client going away ends this request.
                    std::future::pending::<&'static str>().await
                }
            }),
        )
        .layer(InFlightLayer::new(ctrl.clone()));
    let base = serve(router).await;
    let addr = base.trim_start_matches("http://");

    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"GET /hang HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    entered(&mut entered_rx).await;
    assert_eq!(ctrl.count(), 1);
    drop(socket);
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_gives_the_count_back() {
    let ctrl = TrackerController::new(1).unwrap();
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    // The panic unwinds through the layer's future up to CatchPanicLayer, which answers 500.
    let router = Router::new()
        .route(
            "/panic",
            get(move || {
                let entered_tx = entered_tx.clone();
                async move {
                    entered_tx.send(()).unwrap();
                    if entered_tx.is_closed() {
                        return "unreachable";
                    }
                    panic!("handler failure the layer must survive")
                }
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::new())
                .layer(InFlightLayer::new(ctrl.clone())),
        );
    let base = serve(router).await;

    let (status, _) = get_body(&format!("{base}/panic")).await;
    entered(&mut entered_rx).await;
    assert_eq!(status, 500);
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);

    // The service keeps working and counting after the panic.
    let (status, _) = get_body(&format!("{base}/panic")).await;
    assert_eq!(status, 500);
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_hyper_util_client_counts_its_calls_with_a_predicate() {
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    // Permits, not a `Notify`: two releases given before either handler waits must release
    // both (a `Notify` keeps one).
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let handler_release = release.clone();
    // A plain server: the layer is on the client this time.
    let router = Router::new().route(
        "/slow",
        get(move || {
            let entered_tx = entered_tx.clone();
            let release = handler_release.clone();
            async move {
                entered_tx.send(()).unwrap();
                release.acquire().await.unwrap().forget();
                "processed"
            }
        }),
    );
    let base = serve(router).await;

    let ctrl = TrackerController::new(1).unwrap();
    let outbound =
        ServiceBuilder::new()
            .layer(InFlightLayer::new(ctrl.clone()).with_predicate(
                |r: &http::Request<Full<Bytes>>| r.headers().get("x-uncounted").is_none(),
            ))
            .service(client());

    let call = |uncounted: bool| {
        let mut builder = http::Request::get(format!("{base}/slow"));
        if uncounted {
            builder = builder.header("x-uncounted", "1");
        }
        let request = builder.body(Full::new(Bytes::new())).unwrap();
        let service = outbound.clone();
        tokio::spawn(async move {
            use tower::ServiceExt;
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        })
    };

    let counted = call(false);
    entered(&mut entered_rx).await;
    assert_eq!(ctrl.count(), 1);
    let uncounted = call(true);
    entered(&mut entered_rx).await;
    assert_eq!(ctrl.count(), 1, "the predicate excludes the second call");

    release.add_permits(2);
    let done = |call: tokio::task::JoinHandle<Bytes>| async move {
        tokio::time::timeout(BOUND, call)
            .await
            .expect("the call never completed")
            .unwrap()
    };
    assert_eq!(&done(counted).await[..], b"processed");
    assert_eq!(&done(uncounted).await[..], b"processed");
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);

    // A call to a closed port fails: the error gives the count back.
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/", dead.local_addr().unwrap());
    drop(dead);
    use tower::ServiceExt;
    let failed = outbound
        .clone()
        .oneshot(
            http::Request::get(dead_url)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(failed.is_err());
    assert_eq!(ctrl.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_outbound_call_gives_the_count_back() {
    let (entered_tx, mut entered_rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/hang",
        get(move || {
            let entered_tx = entered_tx.clone();
            async move {
                entered_tx.send(()).unwrap();
                std::future::pending::<&'static str>().await
            }
        }),
    );
    let base = serve(router).await;
    let ctrl = TrackerController::new(1).unwrap();
    let outbound = ServiceBuilder::new()
        .layer(InFlightLayer::new(ctrl.clone()))
        .service(client());
    let call = tokio::spawn(async move {
        use tower::ServiceExt;
        outbound
            .oneshot(
                http::Request::get(format!("{base}/hang"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
    });
    entered(&mut entered_rx).await;
    assert_eq!(ctrl.count(), 1);
    // Aborting the task drops the layer's future mid-call, as a timeout would.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    assert_eq!(ctrl.count(), 0);
    assert!(!ctrl.state().is_blocked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_socket_sees_a_full_response() {
    // The layer changes nothing on the wire: headers and body arrive as the handler wrote them.
    let ctrl = TrackerController::new(1).unwrap();
    let router = Router::new()
        .route("/", get(|| async { "plain" }))
        .layer(InFlightLayer::new(ctrl.clone()));
    let base = serve(router).await;
    let mut socket = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(BOUND, socket.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("plain"), "{answer}");
    unblocked(ctrl.state()).await;
    assert_eq!(ctrl.count(), 0);
}
