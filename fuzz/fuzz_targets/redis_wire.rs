//! Fuzz target `redis_wire`: the harness, its input format and invariants are in
//! `backends/tests/decoders/redis_wire.rs`, shared with the stable property test
//! (`backends/tests/decoder_properties.rs`).
#![no_main]

#[path = "../../backends/tests/decoders/redis_wire.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::check(data));
