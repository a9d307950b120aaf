//! Fuzz target `hub_ops`: the harness, its input format and invariants are in
//! `backends/tests/decoders/hub_ops.rs`, shared with the stable property test
//! (`backends/tests/decoder_properties.rs`).
#![no_main]

#[path = "../../backends/tests/decoders/hub_ops.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
