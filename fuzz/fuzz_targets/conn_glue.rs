//! Fuzz target: `ringgate::fuzzing::conn_glue` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::conn_glue(data));
