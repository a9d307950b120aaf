//! The conformance suite against an in-process hub over real sockets, three instances per
//! scenario, each with its own backend (connection).
#![cfg(feature = "grpc-server")]

use futures_lite::future::block_on;
use reactive_lock_backends::conformance::{self, BackendFactory};
use reactive_lock_backends::grpc::GrpcBackend;
use reactive_lock_backends::testing::HubServer;

struct Factory(Vec<String>);

impl BackendFactory for Factory {
    type Backend = GrpcBackend;
    async fn connect(&self) -> GrpcBackend {
        GrpcBackend::connect(self.0.clone())
            .await
            .expect("connect to the test hub")
    }
}

fn run<F: std::future::Future<Output = ()>>(scenario: impl FnOnce(&'static Factory) -> F) {
    let hub = HubServer::start();
    let factory: &'static Factory = Box::leak(Box::new(Factory(vec![hub.url.clone()])));
    block_on(scenario(factory));
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

#[test]
fn two_replicated_hubs() {
    let (a, b) = (HubServer::start(), HubServer::start());
    let factory = Factory(vec![a.url.clone(), b.url.clone()]);
    block_on(async {
        conformance::busy_blocks_others(&factory).await;
        conformance::lock_data_of_all_busy(&factory).await;
    });
}
