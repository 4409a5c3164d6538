//! Fuzz target: `ringgate::fuzzing::tls_record_open` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringgate::fuzzing::tls_record_open(data));
