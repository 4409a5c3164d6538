//! Fuzz target: `ringgate::fuzzing::http_parse` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::http_parse(data));
