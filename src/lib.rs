//! # reactive-lock
//!
//! Many instances of a service agree, reactively and cheaply, on whether a piece of work is
//! in flight anywhere.
//!
//! Each instance counts its in-flight work per key with a [`TrackerController`]
//! (`increment` / `decrement`, busy threshold with hysteresis). While any instance is busy,
//! every instance sees the key **blocked** in its [`TrackerState`]; readers
//! [`wait_if_blocked`](TrackerState::wait_if_blocked) and are woken the moment all
//! instances are idle — no polling. Instances share state through a [`Backend`]: in-process
//! ([`LocalBackend`]), Redis or gRPC (crate `reactive-lock-backends`).
//!
//! ```
//! use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};
//!
//! # futures_lite::future::block_on(async {
//! let backend = LocalBackend::new(); // or Redis / gRPC from reactive-lock-backends
//! let lock = ReactiveLock::builder()
//!     .instance_name("api-1")
//!     .tracker("payments", TrackerConfig::new().busy_threshold(1))
//!     .build(backend)
//!     .await?;
//!
//! let ctrl = lock.controller("payments")?;
//! ctrl.increment(Some("batch-7")).await?;       // busy: every instance sees "blocked"
//! assert!(lock.state("payments")?.is_blocked());
//! ctrl.decrement(1).await?;                       // idle: waiters everywhere wake up
//! assert!(!lock.state("payments")?.wait_if_blocked().await);
//! lock.shutdown().await;
//! # Ok::<(), reactive_lock::Error>(())
//! # }).unwrap();
//! ```
//!
//! ## Features
//!
//! Listed from `Cargo.toml`; on docs.rs each item says which features it needs.
//!
#![doc = document_features::document_features!()]
//!
//! ## Modules, bottom to top
//!
//! Imports only point down this list (a module uses only those above it):
//!
//! * `sync` — the atomics and the mutex, switched to loom's under `--cfg loom`;
//!   `error` — [`Error`], [`BackendError`]; `handlers` — the registry's handler thread.
//! * `backend` — the [`Backend`] trait and what crosses it: [`Snapshot`], [`Entry`],
//!   [`InstanceStatus`], [`BackendEvent`], and the [`Driver`] a backend may run.
//! * `publish` — the publish protocol: the latest-wins slot, the publishing role
//!   (claim, settle, acknowledge), the driver's bell and leases, the registry's publisher.
//! * `state` — [`TrackerState`]: the aggregate of a key, its waits and handlers.
//! * `controller` — [`TrackerController`]: the packed count word, transitions, guards,
//!   [`Ack`].
//! * `config` — [`TrackerConfig`], the registry's timing and the bounds of every setting;
//!   `local` — [`LocalBackend`].
//! * `driver` — renewal, expiry, delivery, retries and recovery; [`Metrics`].
//! * `registry` — [`ReactiveLock`] and its builder: wires the layers together.
//! * `tower` (feature) — the in-flight layer, over a controller.
#![no_std]
// Without `std` the driver that uses the feed-in half of the core is not built.
#![cfg_attr(not(feature = "std"), allow(dead_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]
// `loom` is the models' build, never a user's: docs mark items with features only.
#![cfg_attr(docsrs, doc(auto_cfg(hide(loom))))]
// no_std hygiene for the library itself (tests and examples may use std freely).
#![warn(
    clippy::std_instead_of_core,
    clippy::std_instead_of_alloc,
    clippy::alloc_instead_of_core
)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod backend;
#[cfg(all(feature = "std", not(loom)))]
mod config;
mod controller;
mod error;
mod publish;
mod state;
mod sync;

#[cfg(all(feature = "std", not(loom)))]
mod driver;
#[cfg(all(feature = "std", not(loom)))]
mod handlers;
#[cfg(all(feature = "metrics", not(loom)))]
mod instruments;
#[cfg(all(feature = "std", not(loom)))]
mod local;
#[cfg(all(feature = "std", not(loom)))]
mod registry;
#[cfg(all(feature = "tower", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

#[cfg(all(feature = "std", not(loom)))]
pub use backend::Driver;
pub use backend::{
    Backend, BackendEvent, BoundPublisher, Entry, InstanceStatus, Snapshot, StoreTime,
};
pub use controller::{Ack, MAX_IN_FLIGHT, OwnedTrackerGuard, TrackerController, TrackerGuard};
pub use error::{BackendError, BackendErrorKind, Error, Result, Timeout};
pub use state::{LOCK_DATA_SEPARATOR, Status, StatusChanges, TrackerState, UnknownPolicy};

/// The driver's bell, for the loom models only: `--cfg loom` is the models' build, never a
/// user's.
#[cfg(loom)]
#[doc(hidden)]
pub use publish::Bell;

#[cfg(all(feature = "std", not(loom)))]
pub use config::{MAX_DURATION, MIN_DURATION, TrackerConfig};
#[cfg(all(feature = "std", not(loom)))]
pub use driver::Metrics;
#[cfg(all(feature = "std", not(loom)))]
pub use local::{LocalBackend, LocalEvents};
#[cfg(all(feature = "std", not(loom)))]
pub use registry::{ReactiveLock, ReactiveLockBuilder};
