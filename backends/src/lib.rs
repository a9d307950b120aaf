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
//!
//! # Features
//!
//! Listed from `Cargo.toml`; on docs.rs each item says which features it needs.
//!
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

/// The README's examples, compiled (and, but for `no_run` ones, run) as doctests here, where
/// both the core and the backends are in scope, so they never rot. In the repository only
/// (`workspace_readme`, set by the build script): the published archive does not hold it.
#[cfg(all(doctest, workspace_readme, feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

#[cfg(all(feature = "test-util", any(feature = "redis", feature = "grpc-server")))]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;

/// Rejects a builder's duration outside
/// [`MIN_DURATION`](reactive_lock::MIN_DURATION)`..=`[`MAX_DURATION`](reactive_lock::MAX_DURATION),
/// naming the backend and the option: the same bounds as the core's settings, so a typo
/// (`0`, a microsecond, years) fails at connect instead of spinning or never firing.
#[cfg(any(feature = "redis", feature = "grpc"))]
fn check_durations(
    backend: &str,
    options: &[(&str, core::time::Duration)],
) -> Result<(), reactive_lock::BackendError> {
    let bounds = reactive_lock::MIN_DURATION..=reactive_lock::MAX_DURATION;
    match options.iter().find(|(_, d)| !bounds.contains(d)) {
        None => Ok(()),
        Some((option, d)) => Err(reactive_lock::BackendError::new(
            reactive_lock::BackendErrorKind::Rejected,
            format!(
                "invalid {backend} option `{option}`: must be between {:?} and {:?}, got {d:?}",
                bounds.start(),
                bounds.end()
            ),
        )),
    }
}

#[cfg(all(test, feature = "redis", feature = "grpc"))]
mod tests {
    use core::time::Duration;
    use futures_lite::future::block_on;
    use reactive_lock::BackendErrorKind;

    #[test]
    fn builder_durations_out_of_bounds_are_rejected_naming_the_option() {
        // Rejected before any connection is tried: nothing listens on port 1.
        let err = block_on(
            crate::redis::RedisBackend::builder("redis://127.0.0.1:1")
                .response_timeout(Duration::ZERO)
                .connect(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected);
        assert!(err.to_string().contains("`response_timeout`"), "{err}");
        let err = block_on(
            crate::grpc::GrpcBackend::builder(["http://127.0.0.1:1"])
                .keep_alive_timeout(reactive_lock::MAX_DURATION + Duration::from_secs(1))
                .connect(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Rejected);
        assert!(err.to_string().contains("`keep_alive_timeout`"), "{err}");
    }
}
