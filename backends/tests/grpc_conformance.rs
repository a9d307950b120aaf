//! The conformance suite against an in-process hub over real sockets, three instances per
//! scenario, each with its own backend (connection); and against two replicated hubs.
#![cfg(feature = "grpc-server")]

use futures_lite::future::block_on;
use reactive_lock_backends::conformance;
use reactive_lock_backends::testing::{GrpcFactory, HubServer};

reactive_lock_backends::conformance_tests!({
    let hub = HubServer::start();
    let factory = GrpcFactory(vec![hub.url.clone()]);
    (hub, factory)
});

#[test]
fn two_replicated_hubs() {
    let (a, b) = (HubServer::start(), HubServer::start());
    let factory = GrpcFactory(vec![a.url.clone(), b.url.clone()]);
    block_on(async {
        conformance::busy_blocks_others(&factory).await;
        conformance::lock_data_of_all_busy(&factory).await;
    });
}
