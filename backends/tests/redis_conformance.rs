//! The conformance suite against a real redis-server, three instances per scenario, each
//! with its own connections.
#![cfg(feature = "redis")]

use futures_lite::future::block_on;
use reactive_lock_backends::conformance::{self, BackendFactory};
use reactive_lock_backends::redis::RedisBackend;
use reactive_lock_backends::testing::RedisServer;

struct Factory(String);

impl BackendFactory for Factory {
    type Backend = RedisBackend;
    async fn connect(&self) -> RedisBackend {
        RedisBackend::connect(&self.0)
            .await
            .expect("connect to the test redis-server")
    }
}

fn run<F: std::future::Future<Output = ()>>(scenario: impl FnOnce(&'static Factory) -> F) {
    let server = RedisServer::start();
    let factory: &'static Factory = Box::leak(Box::new(Factory(server.url())));
    block_on(scenario(factory));
    drop(server);
}

#[test]
fn busy_blocks_others() {
    run(conformance::busy_blocks_others);
}

#[test]
fn lock_data_of_all_busy() {
    run(conformance::lock_data_of_all_busy);
}

#[test]
fn all_idle_releases_waiters() {
    run(conformance::all_idle_releases_waiters);
}

#[test]
fn threshold_hysteresis() {
    run(conformance::threshold_hysteresis);
}

#[test]
fn crashed_instance_expires() {
    run(conformance::crashed_instance_expires);
}

#[test]
fn shutdown_unblocks_at_once() {
    run(conformance::shutdown_unblocks_at_once);
}

#[test]
fn random_operations_converge() {
    run(conformance::random_operations_converge);
}
