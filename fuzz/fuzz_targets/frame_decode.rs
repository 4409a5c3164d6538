//! Fuzz target: `ringgate::fuzzing::frame_decode` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::frame_decode(data));
