//! Fuzz target: `ringgate::fuzzing::session` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::session(data));
