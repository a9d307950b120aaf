//! The Redis backend over a local 3-master Redis Cluster that the test creates itself: the
//! conformance scenarios, and pub/sub across nodes.
#![cfg(feature = "redis")]

use futures_lite::future::block_on;
use reactive_lock_backends::conformance::{self, BackendFactory};
use reactive_lock_backends::redis::{RedisBackend, hash_name};
use reactive_lock_backends::testing::RedisCluster;
use redis::Commands;

struct Factory(Vec<String>);

impl BackendFactory for Factory {
    type Backend = RedisBackend;
    async fn connect(&self) -> RedisBackend {
        RedisBackend::connect_cluster(self.0.clone())
            .await
            .expect("connect to the test cluster")
    }
}

#[test]
fn conformance_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let factory = Factory(cluster.urls());
    block_on(async {
        conformance::busy_blocks_others(&factory).await;
        conformance::lock_data_of_all_busy(&factory).await;
        conformance::all_idle_releases_waiters(&factory).await;
        conformance::threshold_hysteresis(&factory).await;
        conformance::crashed_instance_expires(&factory).await;
        conformance::shutdown_unblocks_at_once(&factory).await;
        conformance::random_operations_converge(&factory).await;
    });
    // The suite's key lives on one master; the entries are in the .NET format there.
    let mut found = false;
    for node in &cluster.nodes {
        let keys: Vec<String> = node.client().keys("*ReactiveLock:*").unwrap();
        if keys.contains(&hash_name(conformance::KEY)) {
            found = true;
            assert!(
                keys.iter().any(|k| k.ends_with(":seq")),
                "the sequence hash shares the slot: {keys:?}"
            );
        }
    }
    assert!(found, "the key's hash exists on one of the masters");
}

#[test]
fn instances_connected_through_different_nodes_see_each_other() {
    let cluster = RedisCluster::start(3);
    let urls = cluster.urls();
    block_on(async {
        let mut locks = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            // Each instance knows only one (different) seed node.
            let backend = RedisBackend::connect_cluster([url.clone()]).await.unwrap();
            locks.push(
                conformance::builder(&format!("n{i}"), 1)
                    .build(backend)
                    .await
                    .unwrap(),
            );
        }
        for (i, lock) in locks.iter().enumerate() {
            let data = format!("from-{i}");
            lock.controller(conformance::KEY)
                .unwrap()
                .increment(Some(&data))
                .await
                .unwrap();
            conformance::eventually_all(
                &locks,
                conformance::KEY,
                conformance::PROPAGATION_LIMIT,
                "sees the writer through another node",
                |s| s.lock_data_entries().contains(&data),
            )
            .await;
            lock.controller(conformance::KEY)
                .unwrap()
                .decrement(1)
                .await
                .unwrap();
        }
        for lock in &locks {
            lock.shutdown().await;
        }
    });
}
