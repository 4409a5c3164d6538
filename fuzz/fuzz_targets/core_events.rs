//! Fuzz target: `ringgate::fuzzing::core_events` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::core_events(data));
