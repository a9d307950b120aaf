//! Metrics through the `metrics` facade (feature `metrics`): one set of handles per key,
//! registered once when the registry is built, so recording is a call on a handle (nothing
//! at all without an installed recorder) and never a lookup by name.
//!
//! The names, units and labels are listed in the README's metrics table.

use alloc::string::String;

use metrics::{Counter, Gauge, Histogram};

/// A key's metrics, labelled `key`.
pub(crate) struct KeyInstruments {
    pub(crate) busy_transitions: Counter,
    pub(crate) idle_transitions: Counter,
    pub(crate) publishes: Counter,
    pub(crate) publish_failures: Counter,
    pub(crate) publish_seconds: Histogram,
    pub(crate) propagation_seconds: Histogram,
    pub(crate) blocked: Gauge,
    pub(crate) unknown: Gauge,
    pub(crate) busy_instances: Gauge,
    pub(crate) in_flight: Gauge,
    pub(crate) waiting: Gauge,
    pub(crate) handler_panics: Counter,
    /// Other instances' busy entries this instance judged expired on the store's clock.
    pub(crate) expiries: Counter,
}

impl KeyInstruments {
    pub(crate) fn new(key: &str) -> Self {
        let key = String::from(key);
        KeyInstruments {
            busy_transitions: metrics::counter!("reactive_lock_transitions_total", "key" => key.clone(), "direction" => "busy"),
            idle_transitions: metrics::counter!("reactive_lock_transitions_total", "key" => key.clone(), "direction" => "idle"),
            publishes: metrics::counter!("reactive_lock_publishes_total", "key" => key.clone()),
            publish_failures: metrics::counter!("reactive_lock_publish_failures_total", "key" => key.clone()),
            publish_seconds: metrics::histogram!("reactive_lock_publish_seconds", "key" => key.clone()),
            propagation_seconds: metrics::histogram!("reactive_lock_propagation_seconds", "key" => key.clone()),
            blocked: metrics::gauge!("reactive_lock_blocked", "key" => key.clone()),
            unknown: metrics::gauge!("reactive_lock_unknown", "key" => key.clone()),
            busy_instances: metrics::gauge!("reactive_lock_busy_instances", "key" => key.clone()),
            in_flight: metrics::gauge!("reactive_lock_in_flight", "key" => key.clone()),
            waiting: metrics::gauge!("reactive_lock_waiting", "key" => key.clone()),
            handler_panics: metrics::counter!("reactive_lock_handler_panics_total", "key" => key.clone()),
            expiries: metrics::counter!("reactive_lock_expiries_total", "key" => key),
        }
    }

    /// Counts a publish's outcome.
    pub(crate) fn publish_outcome<T, E>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => self.publishes.increment(1),
            Err(_) => self.publish_failures.increment(1),
        }
    }
}

/// The registry's metrics without a key.
pub(crate) struct RegistryInstruments {
    pub(crate) renewals: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) disconnects: Counter,
}

impl RegistryInstruments {
    pub(crate) fn new() -> Self {
        RegistryInstruments {
            renewals: metrics::counter!("reactive_lock_renewals_total"),
            resyncs: metrics::counter!("reactive_lock_resyncs_total"),
            disconnects: metrics::counter!("reactive_lock_disconnects_total"),
        }
    }
}
