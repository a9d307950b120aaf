//! Backends for [`reactive_lock`] and the conformance suite every backend passes.
//!
//! * [`conformance`] — the shared suite: one set of scenarios, parameterised by a
//!   [`BackendFactory`](conformance::BackendFactory), run against
//!   [`LocalBackend`](reactive_lock::LocalBackend) here and against every other backend in
//!   its own tests.
//!
//! The Redis (feature `redis`) and gRPC (features `grpc`, `grpc-server`) backends plug into
//! the same [`Backend`](reactive_lock::Backend) trait.

pub mod conformance;

#[cfg(feature = "redis")]
pub mod redis;

/// The README's examples, compiled (and, but for `no_run` ones, run) as doctests here, where
/// both the core and the backends are in scope, so they never rot.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(any(feature = "redis", feature = "grpc-server"))]
pub mod testing;

#[cfg(feature = "grpc")]
pub mod grpc;
