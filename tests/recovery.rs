//! The driver under backend failure, with LocalBackend's simulated outages and restarts.

use std::time::{Duration, Instant};

use reactive_lock::{
    Backend, BackendError, Error, InstanceStatus, LocalBackend, LocalEvents, ReactiveLock,
    Snapshot, Status, TrackerConfig, UnknownPolicy,
};

mod common;
use common::{LIMIT, until};

const KEY: &str = "k";

/// The in-process store reached only through `publish`, as a networked backend is (no
/// `publish_now`): transitions go through `Ack` futures and the driver.
#[derive(Clone)]
struct Deferred(LocalBackend);

impl Backend for Deferred {
    type Events = LocalEvents;

    async fn publish(
        &self,
        key: &str,
        instance: &str,
        status: &InstanceStatus,
    ) -> Result<(), BackendError> {
        self.0.publish(key, instance, status).await
    }

    async fn snapshot(&self, key: &str) -> Result<Snapshot, BackendError> {
        self.0.snapshot(key).await
    }

    async fn subscribe(
        &self,
        instance: &str,
        keys: &[String],
    ) -> Result<LocalEvents, BackendError> {
        self.0.subscribe(instance, keys).await
    }
}

async fn instance(backend: &LocalBackend, name: &str, policy: UnknownPolicy) -> ReactiveLock {
    instance_on(backend.clone(), name, policy).await
}

async fn instance_on<B: Backend>(backend: B, name: &str, policy: UnknownPolicy) -> ReactiveLock {
    ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_millis(200))
        .expiration(Duration::from_secs(2))
        .unknown_policy(policy)
        .tracker(KEY, TrackerConfig::new())
        .build(backend)
        .await
        .unwrap()
}

#[test]
fn outage_gives_unknown_with_policy_then_recovers() {
    futures_lite::future::block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", UnknownPolicy::KeepLast).await;
        let keep = instance(&backend, "keep", UnknownPolicy::KeepLast).await;
        let closed = instance(&backend, "closed", UnknownPolicy::Blocked).await;
        let open = instance(&backend, "open", UnknownPolicy::Unblocked).await;
        a.controller(KEY)
            .unwrap()
            .increment(Some("x"))
            .await
            .unwrap();
        for l in [&keep, &closed, &open] {
            until(&l.state(KEY).unwrap(), "blocked by a", |s| s.is_blocked()).await;
        }

        backend.set_available(false);
        for l in [&keep, &closed, &open] {
            until(&l.state(KEY).unwrap(), "Unknown during the outage", |s| {
                s.status() == Status::Unknown
            })
            .await;
        }
        assert!(
            keep.state(KEY).unwrap().is_blocked(),
            "KeepLast: last known (blocked)"
        );
        assert!(closed.state(KEY).unwrap().is_blocked(), "Blocked policy");
        assert!(!open.state(KEY).unwrap().is_blocked(), "Unblocked policy");
        assert_eq!(
            a.state(KEY).unwrap().status(),
            Status::Blocked,
            "own busy status is certain"
        );

        // A transition during the outage: applied locally, its Ack reports the failure,
        // the count stays, and the driver publishes it once the store is back.
        let ctrl = a.controller(KEY).unwrap();
        match ctrl.decrement(1).await {
            Err(Error::Backend { key, .. }) => assert_eq!(key, KEY),
            other => panic!("expected a backend error during the outage, got {other:?}"),
        }
        assert_eq!(ctrl.count(), 0);
        assert!(
            !a.state(KEY).unwrap().is_blocked(),
            "applied locally despite the outage"
        );

        backend.set_available(true);
        for l in [&keep, &closed, &open] {
            until(&l.state(KEY).unwrap(), "recovered and unblocked", |s| {
                s.status() == Status::Unblocked
            })
            .await;
        }
        assert!(a.metrics().publish_failures >= 1);
        assert!(keep.metrics().disconnects >= 1);
        // A recovery counts once complete: after the re-read that already unblocked the
        // state above, the driver still re-publishes before it bumps the counter.
        let deadline = Instant::now() + LIMIT;
        while keep.metrics().resyncs == 0 {
            assert!(
                Instant::now() < deadline,
                "no resync counted: {:?}",
                keep.metrics()
            );
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        for l in [a, keep, closed, open] {
            l.shutdown().await;
        }
    });
}

#[test]
fn store_restart_is_repaired_by_recovery_and_renewal() {
    futures_lite::future::block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", UnknownPolicy::KeepLast).await;
        let b = instance(&backend, "b", UnknownPolicy::KeepLast).await;
        let _busy = a.controller(KEY).unwrap().enter_owned(Some("kept"));
        let b_state = b.state(KEY).unwrap();
        until(&b_state, "b sees a busy", |s| s.is_blocked()).await;

        // The store restarts empty: renewal (every 200 ms) must put a's status back, so a
        // read-through by b still finds it.
        backend.set_available(false);
        backend.clear();
        backend.set_available(true);
        let deadline = Instant::now() + LIMIT;
        loop {
            b_state.refresh().await.unwrap();
            if b_state.is_blocked() && b_state.lock_data().as_deref() == Some("kept") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a's busy status was not restored after the restart"
            );
            async_io::Timer::after(Duration::from_millis(50)).await;
        }
        a.shutdown().await;
        until(&b_state, "goodbye unblocks b", |s| !s.is_blocked()).await;
        b.shutdown().await;
    });
}

#[test]
fn guard_transitions_are_published_by_the_driver() {
    futures_lite::future::block_on(async {
        // A backend without inline publishing, and renewal far beyond the test's waits:
        // only the hand-off to the driver can publish.
        let backend = Deferred(LocalBackend::new());
        let slow = |name: &'static str| {
            ReactiveLock::builder()
                .instance_name(name)
                .renewal(Duration::from_secs(60))
                .expiration(Duration::from_secs(120))
                .tracker(KEY, TrackerConfig::new())
                .build(backend.clone())
        };
        let a = slow("a").await.unwrap();
        let b = slow("b").await.unwrap();
        let ctrl = a.controller(KEY).unwrap();
        let b_state = b.state(KEY).unwrap();
        {
            let _guard = ctrl.enter(Some("sync"));
            until(&b_state, "guard's busy transition reaches b", |s| {
                s.is_blocked()
            })
            .await;
        }
        until(&b_state, "guard drop's idle transition reaches b", |s| {
            !s.is_blocked()
        })
        .await;
        // A cancelled Ack is published in the background too, at once.
        drop(ctrl.increment(Some("cancelled")));
        until(&b_state, "cancelled ack still published", |s| {
            s.lock_data().as_deref() == Some("cancelled")
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    });
}

/// 100,000 guard flaps of `a`, then a last busy status, until `b` sees it: returns the
/// publishes the store applied.
async fn flap(a: &ReactiveLock, b: &ReactiveLock, publish_count: impl Fn() -> u64) -> u64 {
    let ctrl = a.controller(KEY).unwrap();
    let before = publish_count();
    for _ in 0..100_000 {
        drop(ctrl.enter(None));
    }
    let _last = ctrl.enter(Some("final"));
    let b_state = b.state(KEY).unwrap();
    until(&b_state, "b converges on the newest status", |s| {
        s.lock_data().as_deref() == Some("final")
    })
    .await;
    publish_count() - before
}

#[test]
fn flapping_coalesces_to_the_newest_status() {
    futures_lite::future::block_on(async {
        // A backend that must be awaited: the driver publishes only the newest status.
        let backend = LocalBackend::new();
        let deferred = Deferred(backend.clone());
        let a = instance_on(deferred.clone(), "a", UnknownPolicy::KeepLast).await;
        let b = instance_on(deferred, "b", UnknownPolicy::KeepLast).await;
        let published = flap(&a, &b, || backend.publish_count()).await;
        eprintln!("flapping, deferred: {published} publishes for 200,001 transitions");
        assert!(
            published < 100_000,
            "latest-wins must coalesce: {published} publishes for 200,001 transitions"
        );
        a.shutdown().await;
        b.shutdown().await;

        // The in-process store takes every transition inline (each is one cheap write);
        // a reader that cannot keep up reads the key once, however many writes it missed.
        // a's driver must not publish meanwhile: a renewal claims the key while it runs (as
        // it should), and a transition in that window is left to it (the build did the
        // first sync: the driver starts with nothing to publish).
        let backend = LocalBackend::new();
        let a = ReactiveLock::builder()
            .instance_name("a")
            .renewal(Duration::from_secs(60))
            .expiration(Duration::from_secs(120))
            .tracker(KEY, TrackerConfig::new())
            .build(backend.clone())
            .await
            .unwrap();
        let (b, driver) = ReactiveLock::builder()
            .instance_name("b")
            .tracker(KEY, TrackerConfig::new())
            .build_with_driver(backend.clone())
            .await
            .unwrap();
        let read_before = b.metrics().snapshots_applied;
        // b's driver starts only once every write is done: the reader is as slow as can be.
        let ctrl = a.controller(KEY).unwrap();
        let before = backend.publish_count();
        for _ in 0..100_000 {
            drop(ctrl.enter(None));
        }
        let _last = ctrl.enter(Some("final"));
        assert_eq!(
            backend.publish_count() - before,
            200_001,
            "every transition published inline"
        );
        let driver = std::thread::spawn(move || futures_lite::future::block_on(driver));
        until(
            &b.state(KEY).unwrap(),
            "b converges on the newest status",
            |s| s.lock_data().as_deref() == Some("final"),
        )
        .await;
        // The driver counts a snapshot just after applying it: wait for the two expected
        // (below), give a third the time to show, then check that there are exactly two
        // (nothing else writes until the shutdowns below).
        let deadline = Instant::now() + LIMIT;
        while b.metrics().snapshots_applied < read_before + 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(100));
        let read = b.metrics().snapshots_applied - read_before;
        eprintln!("flapping, inline: {read} reader snapshots for 200,001 transitions");
        // One read the late-started driver makes to catch up, one for all the coalesced
        // notifications.
        assert_eq!(
            read, 2,
            "the stalled reader reads the key twice, not per transition"
        );
        a.shutdown().await;
        b.shutdown().await;
        driver.join().unwrap();
    });
}

#[test]
fn dropping_the_registry_is_a_crash() {
    futures_lite::future::block_on(async {
        let backend = LocalBackend::new();
        let a = instance(&backend, "a", UnknownPolicy::KeepLast).await;
        let b = instance(&backend, "b", UnknownPolicy::KeepLast).await;
        let ctrl = a.controller(KEY).unwrap();
        ctrl.increment(None).await.unwrap();
        let b_state = b.state(KEY).unwrap();
        until(&b_state, "b sees a", |s| s.is_blocked()).await;
        drop(a);
        assert!(
            matches!(ctrl.decrement(1).await, Err(Error::Shutdown { .. })),
            "no goodbye after a drop"
        );
        // Expiration 2 s, no renewal any more: b unblocks by expiry alone.
        until(&b_state, "expiry unblocks b", |s| !s.is_blocked()).await;
        b.shutdown().await;
    });
}

/// The driver looks only at the trackers that changed (a rung tracker, an event's key, the
/// earliest expiry): with a thousand keys, guards' background publishes and a crashed
/// instance's expiry still land on exactly their keys.
#[test]
fn among_a_thousand_keys_background_publishes_and_expiry_hit_their_keys() {
    futures_lite::future::block_on(async {
        let backend = Deferred(LocalBackend::new());
        let build = |name: &'static str| {
            let backend = backend.clone();
            async move {
                let mut builder = ReactiveLock::builder()
                    .instance_name(name)
                    .renewal(Duration::from_millis(200))
                    .expiration(Duration::from_secs(2));
                for i in 0..1000 {
                    builder = builder.tracker(format!("k{i}"), TrackerConfig::new());
                }
                builder.build(backend).await.unwrap()
            }
        };
        let a = build("a").await;
        let b = build("b").await;
        // Guards cannot await: their transitions reach the store through the driver.
        let held = a.controller("k777").unwrap().enter_owned(Some("job"));
        let released = a.controller("k3").unwrap().enter_owned(None);
        let k777 = b.state("k777").unwrap();
        let k3 = b.state("k3").unwrap();
        until(&k777, "b sees a on k777", |s| s.is_blocked()).await;
        until(&k3, "b sees a on k3", |s| s.is_blocked()).await;
        drop(released);
        until(&k3, "b sees k3 released", |s| !s.is_blocked()).await;
        assert!(k777.is_blocked(), "k777 still held");
        for other in ["k0", "k776", "k778", "k999"] {
            assert!(!b.state(other).unwrap().is_blocked(), "{other} untouched");
        }
        // a crashes holding k777: no goodbye, its entry expires on b's side.
        std::mem::forget(held);
        drop(a);
        until(&k777, "k777 expires on b", |s| !s.is_blocked()).await;
        b.shutdown().await;
    });
}
