//! Backends for [`reactive_lock`]: Redis (feature `redis`) and gRPC (features `grpc`, the
//! client, and `grpc-server`, the hub), each plugging into the same
//! [`Backend`](reactive_lock::Backend) trait.
//!
//! The test kit is behind the `test-util` feature (tokio's convention), for tests of this
//! crate and of backends written elsewhere, not for production:
//!
//! * `conformance` — the shared suite: one set of scenarios, parameterised by a
//!   `BackendFactory`, run against [`LocalBackend`](reactive_lock::LocalBackend) and every
//!   backend here; run it against a backend of your own;
//! * `testing` — a `redis-server` (single or cluster) and a hub on free ports, for tests.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// The README's examples, compiled (and, but for `no_run` ones, run) as doctests here, where
/// both the core and the backends are in scope, so they never rot.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(all(feature = "test-util", any(feature = "redis", feature = "grpc-server")))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
