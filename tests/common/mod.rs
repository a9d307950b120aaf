//! Helpers shared by the integration tests.

use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use reactive_lock::TrackerState;

/// How long a test waits for a state to come about before it fails.
pub const LIMIT: Duration = Duration::from_secs(10);

/// Waits until `check` holds for `state`, woken by its changes (and every 50 ms, for
/// changes only the clock makes); fails naming `what` after [`LIMIT`].
pub async fn until(state: &TrackerState, what: &str, check: impl Fn(&TrackerState) -> bool) {
    let deadline = Instant::now() + LIMIT;
    let mut changes = state.changes();
    while !check(state) {
        assert!(
            Instant::now() < deadline,
            "not within {LIMIT:?}: {what} (status {:?})",
            state.status()
        );
        // A stream that ended (the registry's driver is gone) leaves the clock to wake this.
        futures_lite::future::or(
            async {
                if changes.next().await.is_none() {
                    futures_lite::future::pending::<()>().await;
                }
            },
            async {
                async_io::Timer::after(Duration::from_millis(50)).await;
            },
        )
        .await;
    }
}
