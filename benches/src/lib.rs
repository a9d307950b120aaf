//! criterion benchmarks of reactive-lock live in `benches/`; see `BENCHMARKS.md`. This
//! library holds what several of them measure the same way.

use futures_lite::StreamExt;
use reactive_lock::{StatusChanges, TrackerController, TrackerState};

/// Two acknowledged transitions: busy (threshold 1) and back to idle.
pub async fn transition_ack_pair(ctrl: &TrackerController) {
    ctrl.increment(Some("x"))
        .await
        .expect("busy transition acknowledged");
    ctrl.decrement(1)
        .await
        .expect("idle transition acknowledged");
}

/// `ctrl`'s instance turns busy until `observer` (another instance's state) sees it
/// blocked, then idle until it sees it unblocked; `changes` is `observer.changes()`.
pub async fn propagation_pair(
    ctrl: &TrackerController,
    observer: &TrackerState,
    changes: &mut StatusChanges,
) {
    ctrl.increment(Some("x"))
        .await
        .expect("busy transition acknowledged");
    while !observer.is_blocked() {
        changes.next().await;
    }
    ctrl.decrement(1)
        .await
        .expect("idle transition acknowledged");
    while observer.is_blocked() {
        changes.next().await;
    }
}
