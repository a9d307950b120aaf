//! The conformance suite against a real redis-server (one per test), three instances per
//! scenario, each with its own connections.
#![cfg(feature = "redis")]

use reactive_lock_backends::testing::{RedisFactory, RedisServer};

reactive_lock_backends::conformance_tests!({
    let server = RedisServer::start();
    let factory = RedisFactory(server.url());
    (server, factory)
});
