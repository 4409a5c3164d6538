//! Reading a JWT without its secret, to say *why* a server refused it.
//!
//! CONNACK 2 has one status for every token problem (the server must not
//! tell an attacker which check failed). The holder of the token may learn
//! more from the token itself: its claims are only base64url JSON. An
//! expired `exp` or a token that is not a JWT at all can be told apart
//! locally; anything else that a server refuses is a signature (another
//! secret) or an `iss`/`aud` mismatch, which only the server can check.

use base64::Engine;

/// What the token itself says, checked against `now_s` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenShape {
    /// Not three base64url parts with a JSON claims object: a pasted
    /// fragment, a file with something else in it.
    Malformed(String),
    /// `exp` is at or before `now_s`.
    Expired { sub: Option<String>, exp: u64, ago_s: u64 },
    /// `nbf` is after `now_s`.
    NotYetValid { sub: Option<String>, nbf: u64 },
    /// Well formed and within its lifetime: a refusal is the signature
    /// (minted with another secret) or the issuer or audience.
    Current { sub: Option<String>, exp: Option<u64> },
}

/// Decodes the claims (no signature check: there is no secret here).
pub fn inspect(token: &str, now_s: u64) -> TokenShape {
    let parts: Vec<&str> = token.trim().split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
        return TokenShape::Malformed(format!("a JWT has three non-empty parts separated by '.', this has {}", parts.len()));
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = match b64.decode(parts[1].trim_end_matches('=')) {
        Ok(c) => c,
        Err(e) => return TokenShape::Malformed(format!("its claims part is not base64url: {e}")),
    };
    let v: serde_json::Value = match serde_json::from_slice(&claims) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        Ok(_) => return TokenShape::Malformed("its claims are not a JSON object".into()),
        Err(e) => return TokenShape::Malformed(format!("its claims are not JSON: {e}")),
    };
    let sub = v.get("sub").and_then(|s| s.as_str()).map(str::to_string);
    let exp = v.get("exp").and_then(|e| e.as_u64());
    if let Some(exp) = exp.filter(|&e| e <= now_s) {
        return TokenShape::Expired { sub, exp, ago_s: now_s - exp };
    }
    if let Some(nbf) = v.get("nbf").and_then(|n| n.as_u64()).filter(|&n| n > now_s) {
        return TokenShape::NotYetValid { sub, nbf };
    }
    TokenShape::Current { sub, exp }
}

/// Why a server answered CONNACK 2 to this token, in words with a fix.
pub fn explain_refusal(token: &str, now_s: u64) -> String {
    let mint = "mint a new one with `ringgate token --user NAME` (pass the server's --config)";
    match inspect(token, now_s) {
        TokenShape::Malformed(why) => format!("the token is malformed ({why}); {mint}"),
        TokenShape::Expired { exp, ago_s, .. } => {
            format!("the token expired at {} ({} s ago); {mint}", utc(exp), ago_s)
        }
        TokenShape::NotYetValid { nbf, .. } => {
            format!("the token is not valid before {} (its nbf): check this machine's clock", utc(nbf))
        }
        TokenShape::Current { sub, exp } => format!(
            "the server refused a well-formed, unexpired token{}{}: it was signed with another secret than the server's \
             (auth.jwt_secret / jwt_secret_file / <data_dir>/jwt-secret), or its iss/aud do not match auth.issuer/auth.audience; {mint}",
            sub.map(|s| format!(" for {s:?}")).unwrap_or_default(),
            exp.map(|e| format!(" (expires {})", utc(e))).unwrap_or_default(),
        ),
    }
}

/// `2026-12-04T23:00:00Z` for Unix seconds (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(claims: &str) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("{}.{}.{}", b.encode(r#"{"alg":"HS256","typ":"JWT"}"#), b.encode(claims), b.encode("sig"))
    }

    #[test]
    fn shapes() {
        assert!(matches!(inspect("garbage", 100), TokenShape::Malformed(_)));
        assert!(matches!(inspect("a.b", 100), TokenShape::Malformed(_)));
        assert!(matches!(inspect("a.!!!.c", 100), TokenShape::Malformed(_)));
        assert!(matches!(inspect(&tok("[1]"), 100), TokenShape::Malformed(_)));
        assert_eq!(inspect(&tok(r#"{"sub":"a","exp":90}"#), 100), TokenShape::Expired { sub: Some("a".into()), exp: 90, ago_s: 10 });
        assert_eq!(inspect(&tok(r#"{"sub":"a","exp":200,"nbf":150}"#), 100), TokenShape::NotYetValid { sub: Some("a".into()), nbf: 150 });
        assert_eq!(inspect(&tok(r#"{"sub":"a","exp":200}"#), 100), TokenShape::Current { sub: Some("a".into()), exp: Some(200) });
    }

    #[test]
    fn refusals_read_differently() {
        assert!(explain_refusal(&tok(r#"{"exp":1764892800}"#), 1764892810).contains("expired at 2025-12-05T00:00:00Z (10 s ago)"));
        assert!(explain_refusal(&tok(r#"{"exp":1764892900}"#), 1764892810).contains("another secret"));
        assert!(explain_refusal("not-a-token", 0).contains("malformed"));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
