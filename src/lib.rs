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
//! * `std` (default): the registry ([`ReactiveLock`]), the background driver, the
//!   [`LocalBackend`], blocking and timeout waits. Without it the crate is `no_std` +
//!   `alloc`: [`TrackerState`], standalone [`TrackerController`]s and the [`Backend`] types.
//! * `tower`: [`tower::InFlightLayer`], which keeps a tracker incremented while HTTP requests
//!   are in flight through any `tower::Service` (axum/hyper servers, hyper-util clients).
#![no_std]
// Without `std` the driver that uses the feed-in half of the core is not built.
#![cfg_attr(not(feature = "std"), allow(dead_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]
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
mod controller;
mod error;
mod state;
mod sync;

#[cfg(all(feature = "std", not(loom)))]
mod driver;
#[cfg(all(feature = "std", not(loom)))]
mod local;
#[cfg(all(feature = "std", not(loom)))]
mod registry;
#[cfg(all(feature = "tower", not(loom)))]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;

pub use backend::{
    Backend, BackendEvent, BoundPublisher, Entry, InstanceStatus, Snapshot, StoreTime,
};
pub use controller::{Ack, OwnedTrackerGuard, TrackerController, TrackerGuard};
pub use error::{BackendError, BackendErrorKind, Error, Result, Timeout};
pub use state::{LOCK_DATA_SEPARATOR, Status, StatusChanges, TrackerState, UnknownPolicy};

#[cfg(all(feature = "std", not(loom)))]
pub use driver::{Driver, Metrics};
#[cfg(all(feature = "std", not(loom)))]
pub use local::{LocalBackend, LocalEvents};
#[cfg(all(feature = "std", not(loom)))]
pub use registry::{ReactiveLock, ReactiveLockBuilder, TrackerConfig};
