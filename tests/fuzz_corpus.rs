//! The fuzz targets' committed corpora (`fuzz/corpus/<target>/`) and a
//! bounded number of seeded random inputs through the same entry points the
//! cargo-fuzz targets call, so the normal test run (stable Rust, no
//! cargo-fuzz) keeps every input fuzzing ever found interesting passing.

use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!inputs.is_empty(), "empty corpus {}", dir.display());
    inputs.sort();
    inputs
}

/// xorshift: reproducible random inputs without a dependency.
fn random_inputs(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count)
        .map(|_| {
            let len = (next() as usize) % max_len;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

fn run(target: &str, f: fn(&[u8]), random: usize, max_len: usize) {
    let inputs = corpus(target);
    let n = inputs.len();
    for input in inputs.into_iter().chain(random_inputs(0x5eed ^ target.len() as u64, random, max_len)) {
        f(&input);
    }
    eprintln!("{target}: {n} corpus inputs and {random} random ones");
}

#[test]
fn frame_decode_corpus() {
    run("frame_decode", ringgate::fuzzing::frame_decode, 20_000, 256);
}

#[test]
fn session_corpus() {
    run("session", ringgate::fuzzing::session, 5_000, 512);
}

#[test]
fn tls_record_open_corpus() {
    run("tls_record_open", ringgate::fuzzing::tls_record_open, 500, 512);
}

#[test]
fn conn_glue_corpus() {
    run("conn_glue", ringgate::fuzzing::conn_glue, 200, 512);
}

#[test]
fn http_parse_corpus() {
    run("http_parse", ringgate::fuzzing::http_parse, 20_000, 512);
}

#[test]
fn ws_codec_corpus() {
    run("ws_codec", ringgate::fuzzing::ws_codec, 20_000, 512);
}

// `core_events` is replayed by the library's own tests
// (`fuzzing::tests::core_events_corpus`): the simulation driver it needs is
// not in the build that integration tests link.
