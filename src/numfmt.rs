//! Numbers for people: `1,234,567` in what `plan`, `doctor` and the
//! start-up lines print (a ceiling of 19982 or 1048576 is misread easily).

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A non-negative float rounded to a whole number, with separators:
/// 38000.4 -> "38,000". Negative or non-finite values print as they are.
pub fn thousands_f(v: f64) -> String {
    if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
        thousands(v.round() as u64)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_048_576), "1,048,576");
        assert_eq!(thousands_f(38_000.4), "38,000");
        assert_eq!(thousands_f(-1.0), "-1");
    }
}
