//! The conformance suite against the in-process backend, one test per scenario.

use futures_lite::future::block_on;
use reactive_lock::LocalBackend;
use reactive_lock_backends::conformance;

#[test]
fn busy_blocks_others() {
    block_on(conformance::busy_blocks_others(&LocalBackend::new()));
}

#[test]
fn lock_data_of_all_busy() {
    block_on(conformance::lock_data_of_all_busy(&LocalBackend::new()));
}

#[test]
fn all_idle_releases_waiters() {
    block_on(conformance::all_idle_releases_waiters(&LocalBackend::new()));
}

#[test]
fn threshold_hysteresis() {
    block_on(conformance::threshold_hysteresis(&LocalBackend::new()));
}

#[test]
fn crashed_instance_expires() {
    block_on(conformance::crashed_instance_expires(&LocalBackend::new()));
}

#[test]
fn shutdown_unblocks_at_once() {
    block_on(conformance::shutdown_unblocks_at_once(&LocalBackend::new()));
}

#[test]
fn random_operations_converge() {
    block_on(conformance::random_operations_converge(&LocalBackend::new()));
}
