//! Fuzz target: `ringgate::fuzzing::ws_codec` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::ws_codec(data));
