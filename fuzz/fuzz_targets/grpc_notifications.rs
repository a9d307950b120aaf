//! Fuzz target `grpc_notifications`: the harness, its input format and invariants are in
//! `backends/tests/decoders/grpc_notifications.rs`, shared with the stable property test
//! (`backends/tests/decoder_properties.rs`).
#![no_main]

#[path = "../../backends/tests/decoders/grpc_notifications.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
