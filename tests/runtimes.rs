//! The same scenario under tokio, smol, async-std and no runtime at all: the library needs
//! none of them, and works inside each (driver on its own thread, or on the caller's
//! executor via `build_with_driver`).

use core::time::Duration;

use futures_lite::StreamExt;
use reactive_lock::{Driver, LocalBackend, ReactiveLock, TrackerConfig};

const KEY: &str = "payments";

async fn pair(
    backend: &LocalBackend,
    with_driver: bool,
) -> (ReactiveLock, ReactiveLock, Vec<Driver>) {
    let mut drivers = Vec::new();
    let mut locks = Vec::new();
    for name in ["a", "b"] {
        let builder = ReactiveLock::builder()
            .instance_name(name)
            .tracker(KEY, TrackerConfig::new());
        if with_driver {
            let (lock, driver) = builder.build_with_driver(backend.clone()).await.unwrap();
            drivers.push(driver);
            locks.push(lock);
        } else {
            locks.push(builder.build(backend.clone()).await.unwrap());
        }
    }
    let b = locks.pop().unwrap();
    let a = locks.pop().unwrap();
    (a, b, drivers)
}

/// A turns busy, B observes it reactively, waits, and is released when A turns idle.
async fn scenario(a: ReactiveLock, b: ReactiveLock) {
    let b_state = b.state(KEY).unwrap();
    let mut changes = b_state.changes();
    let ctrl = a.controller(KEY).unwrap();
    ctrl.increment(Some("batch-1")).await.unwrap();
    while !b_state.is_blocked() {
        changes
            .next()
            .await
            .expect("changes never end while the state lives");
    }
    assert_eq!(b_state.lock_data().as_deref(), Some("batch-1"));
    assert!(
        b_state
            .wait_if_blocked_timeout(Duration::from_millis(20))
            .await
            .is_err(),
        "A is still busy: the wait must time out"
    );
    let waiter = {
        let b_state = b_state.clone();
        async move { b_state.wait_if_blocked().await }
    };
    let release = async {
        ctrl.decrement(1).await.unwrap();
        true
    };
    let (waited, released) = futures_lite::future::zip(waiter, release).await;
    assert!(released);
    assert!(waited, "B had to wait for A");
    assert!(!b_state.is_blocked());
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn no_runtime() {
    futures_lite::future::block_on(async {
        let (a, b, _) = pair(&LocalBackend::new(), false).await;
        scenario(a, b).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_multi_thread() {
    let (a, b, _) = pair(&LocalBackend::new(), false).await;
    scenario(a, b).await;
}

#[tokio::test(flavor = "current_thread")]
async fn tokio_current_thread_driver_on_caller_executor() {
    let (a, b, drivers) = pair(&LocalBackend::new(), true).await;
    let tasks: Vec<_> = drivers.into_iter().map(tokio::spawn).collect();
    scenario(a, b).await;
    for task in tasks {
        task.await.expect("driver task finishes after shutdown");
    }
}

#[test]
fn smol_driver_on_caller_executor() {
    smol::block_on(async {
        let (a, b, drivers) = pair(&LocalBackend::new(), true).await;
        let tasks: Vec<_> = drivers.into_iter().map(smol::spawn).collect();
        scenario(a, b).await;
        for task in tasks {
            task.await;
        }
    });
}

#[test]
fn smol_driver_thread() {
    smol::block_on(async {
        let (a, b, _) = pair(&LocalBackend::new(), false).await;
        scenario(a, b).await;
    });
}

#[async_std::test]
async fn async_std_driver_on_caller_executor() {
    let (a, b, drivers) = pair(&LocalBackend::new(), true).await;
    let tasks: Vec<_> = drivers.into_iter().map(async_std::task::spawn).collect();
    scenario(a, b).await;
    for task in tasks {
        task.await;
    }
}
