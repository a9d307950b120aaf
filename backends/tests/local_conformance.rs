//! The conformance suite against the in-process backend, one test per scenario.

reactive_lock_backends::conformance_tests!(((), reactive_lock::LocalBackend::new()));
