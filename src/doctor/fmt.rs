//! Number formatting for the report: thousands separators and byte sizes.

use super::*;

// ---------------------------------------------------------------------------
// Number formatting
// ---------------------------------------------------------------------------

pub use crate::numfmt::thousands;

/// Binary units with one decimal: "23.2 GiB".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Decimal kilobytes for per-connection costs, as they are usually quoted: "3.8 KB".
pub(super) fn human_bytes_short(b: u64) -> String {
    format!("{:.1} KB", b as f64 / 1000.0)
}

pub(super) fn limit_bytes(v: u64) -> String {
    if v == RLIM_INFINITY {
        "unlimited".into()
    } else {
        human_bytes(v)
    }
}

