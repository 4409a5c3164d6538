//! Client authentication: JWTs (`sub` = user id, `exp` checked), the HS256 secret, and the `[[auth.keys]]` chosen by `kid`.
//!
//! A token without `kid` is HS256 with `auth.jwt_secret` (as before key ids
//! existed). A token with `kid` is checked with that key only, and its
//! `alg` header must be the key's configured `alg`: the algorithm comes from
//! our configuration, never from the token, so `alg: none` and algorithm
//! confusion (an RS256 public key used as an HS256 secret) are refused by
//! construction. Signatures are checked by `hmac` (HS256 without kid) and by
//! `jsonwebtoken` (its `crypto` module over `ring`) before the claims are
//! parsed, so an unauthenticated peer reaches the JSON parser with chosen
//! input only in the header.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::config::AuthConfig;

type HmacSha256 = Hmac<Sha256>;

/// Longest user id a token may name (the protocol's `str` limit).
pub const MAX_USER_ID_BYTES: usize = crate::limits::MAX_NAME_BYTES;

/// Why a token or the secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Peer fault: not three base64url parts, bad JSON, wrong alg, bad claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Peer fault: signature does not match our secret.
    #[error("token signature does not verify")]
    BadSignature,
    /// Peer fault: `exp` is in the past (beyond the leeway).
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    /// Peer fault: `nbf` is in the future (beyond the leeway).
    #[error("token not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    /// Peer fault: `iss` or `aud` is not what this server requires.
    #[error("token {0} claim does not match")]
    WrongClaim(&'static str),
    /// Operator fault: the secret could not be read or created.
    #[error("JWT secret {path}: {message}")]
    Secret { path: PathBuf, message: String },
    /// Peer fault: the token names a `kid` this server has no key for
    /// (never had, or removed by a reload).
    #[error("token kid is not a configured key")]
    UnknownKid,
    /// Peer fault: the token's `alg` is not the one configured for its `kid`.
    #[error("token alg {got:?} does not match the key's {want}")]
    AlgMismatch { got: String, want: &'static str },
    /// Operator fault: an `[[auth.keys]]` file could not be read or parsed.
    #[error("auth.keys kid {kid:?}: {path}: {message}")]
    KeyFile { kid: String, path: PathBuf, message: String },
}

/// The claims ringgate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
}

/// The claim checks beyond the signature (`[auth]` leeway, issuer, audience).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl ClaimRules {
    pub fn from_config(cfg: &AuthConfig) -> Self {
        ClaimRules { leeway_s: cfg.leeway_s, issuer: cfg.issuer.clone(), audience: cfg.audience.clone() }
    }
}

/// An HS256 key, built once and shared read-only by all cores.
#[derive(Clone)]
pub struct JwtKey {
    mac: HmacSha256,
    rules: ClaimRules,
}

/// A NumericDate claim (integer or fractional seconds) as whole seconds;
/// values beyond u64 saturate, so no later arithmetic can overflow on them.
fn numeric_date(v: Option<serde_json::Value>, name: &'static str) -> Result<Option<u64>, AuthError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            // `as` saturates: 1e300 becomes u64::MAX, not a wrap.
            (None, Some(f)) if f >= 0.0 => Ok(Some(f as u64)),
            _ => Err(AuthError::Malformed(match name {
                "exp" => "exp is negative",
                _ => "nbf is negative",
            })),
        },
        Some(_) => Err(AuthError::Malformed(match name {
            "exp" => "exp is not a number",
            _ => "nbf is not a number",
        })),
    }
}

/// The three parts of a compact JWS.
fn split(token: &str) -> Result<(&str, &str, &str), AuthError> {
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => Ok((h, c, s)),
        _ => Err(AuthError::Malformed("not three dot-separated parts")),
    }
}

fn header(h: &str) -> Result<Header, AuthError> {
    let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| AuthError::Malformed("header is not base64url"))?;
    serde_json::from_slice(&header).map_err(|_| AuthError::Malformed("header is not JSON"))
}

/// The claim checks, run once the signature verified.
fn check_claims(c: &str, rules: &ClaimRules, now_s: u64) -> Result<Claims, AuthError> {
    let claims = URL_SAFE_NO_PAD.decode(c).map_err(|_| AuthError::Malformed("claims are not base64url"))?;
    let raw: RawClaims = serde_json::from_slice(&claims).map_err(|_| AuthError::Malformed("claims are not JSON"))?;
    let sub = raw.sub.ok_or(AuthError::Malformed("no sub claim"))?;
    if crate::limits::check_name(&sub).is_err() {
        return Err(AuthError::Malformed("sub must be 1..=255 bytes of UTF-8 without control characters"));
    }
    let exp = numeric_date(raw.exp, "exp")?.ok_or(AuthError::Malformed("no exp claim"))?;
    let leeway = rules.leeway_s;
    if exp.saturating_add(leeway) <= now_s {
        return Err(AuthError::Expired { exp, now: now_s });
    }
    if let Some(nbf) = numeric_date(raw.nbf, "nbf")? {
        if nbf > now_s.saturating_add(leeway) {
            return Err(AuthError::NotYetValid { nbf, now: now_s });
        }
    }
    if let Some(want) = &rules.issuer {
        if !matches!(&raw.iss, Some(serde_json::Value::String(s)) if s == want) {
            return Err(AuthError::WrongClaim("iss"));
        }
    }
    if let Some(want) = &rules.audience {
        let ok = match &raw.aud {
            Some(serde_json::Value::String(s)) => s == want,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(want.as_str())),
            _ => false,
        };
        if !ok {
            return Err(AuthError::WrongClaim("aud"));
        }
    }
    // With the leeway a token may be used up to `leeway` past its exp.
    Ok(Claims { sub, exp: exp.saturating_add(leeway) })
}

impl JwtKey {
    /// A key that checks only signature and `exp` (no leeway): for minting
    /// and for tests.
    pub fn new(secret: &[u8]) -> Self {
        Self::with_rules(secret, ClaimRules::default())
    }

    pub fn with_rules(secret: &[u8], rules: ClaimRules) -> Self {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Self { mac, rules }
    }

    /// Verifies signature and expiry; `now_s` is Unix seconds.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        let (h, c, s) = split(token)?;
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| AuthError::Malformed("signature is not base64url"))?;
        let mut mac = self.mac.clone();
        mac.update(h.as_bytes());
        mac.update(b".");
        mac.update(c.as_bytes());
        mac.verify_slice(&sig).map_err(|_| AuthError::BadSignature)?;

        let header = header(h)?;
        if header.alg != "HS256" {
            return Err(AuthError::Malformed("alg is not HS256"));
        }
        check_claims(c, &self.rules, now_s)
    }

    /// Signs a token for `user` valid for `ttl_s` seconds from `now_s`.
    pub fn mint(&self, user: &str, now_s: u64, ttl_s: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = serde_json::json!({ "sub": user, "iat": now_s, "exp": now_s.saturating_add(ttl_s) });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut mac = self.mac.clone();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(claims.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{claims}.{sig}")
    }
}

/// The algorithms `[[auth.keys]]` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl KeyAlg {
    /// The `alg` header value (RFC 7518 / RFC 8037 spelling).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Hs256 => "HS256",
            KeyAlg::Rs256 => "RS256",
            KeyAlg::Es256 => "ES256",
            KeyAlg::EdDsa => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [KeyAlg::Hs256, KeyAlg::Rs256, KeyAlg::Es256, KeyAlg::EdDsa].into_iter().find(|a| a.name() == s)
    }

    fn jws(self) -> jsonwebtoken::Algorithm {
        match self {
            KeyAlg::Hs256 => jsonwebtoken::Algorithm::HS256,
            KeyAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
            KeyAlg::Es256 => jsonwebtoken::Algorithm::ES256,
            KeyAlg::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

/// One `[[auth.keys]]` key, parsed.
#[derive(Clone)]
struct KidKey {
    alg: KeyAlg,
    key: jsonwebtoken::DecodingKey,
}

/// Every token key of one configuration: the HS256 secret for tokens
/// without `kid`, and the `[[auth.keys]]` by kid. Immutable; a reload
/// builds a new one and the cores swap it whole.
#[derive(Clone)]
pub struct TokenKeys {
    default: JwtKey,
    by_kid: HashMap<String, KidKey>,
    rules: ClaimRules,
}

impl TokenKeys {
    /// Only the HS256 secret (no key ids).
    pub fn from_secret(secret: &[u8], rules: ClaimRules) -> Self {
        TokenKeys { default: JwtKey::with_rules(secret, rules.clone()), by_kid: HashMap::new(), rules }
    }

    /// The secret plus every `[[auth.keys]]` entry, each file read and
    /// parsed now: a key that does not load is an error here (at start or
    /// reload), never a CONNACK 2 for every client later.
    pub fn load(secret: &[u8], cfg: &AuthConfig) -> Result<Self, AuthError> {
        let mut keys = Self::from_secret(secret, ClaimRules::from_config(cfg));
        for k in &cfg.keys {
            keys.by_kid.insert(k.kid.clone(), load_kid_key(k)?);
        }
        Ok(keys)
    }

    /// The key ids configured, sorted (for logs).
    pub fn kids(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Verifies a token: by its `kid`'s key when it names one, else with
    /// the HS256 secret. `now_s` is Unix seconds.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Claims, AuthError> {
        let (h, c, s) = split(token)?;
        let hdr = header(h)?;
        let Some(kid) = hdr.kid else { return self.default.verify(token, now_s) };
        let key = self.by_kid.get(&kid).ok_or(AuthError::UnknownKid)?;
        // The key's algorithm, not the token's: `none`, or HS256 signed
        // with an RS256 key's public PEM as the secret, stop here.
        if hdr.alg != key.alg.name() {
            return Err(AuthError::AlgMismatch { got: hdr.alg.chars().take(16).collect(), want: key.alg.name() });
        }
        let signed = &token[..h.len() + 1 + c.len()];
        match jsonwebtoken::crypto::verify(s, signed.as_bytes(), &key.key, key.alg.jws()) {
            Ok(true) => check_claims(c, &self.rules, now_s),
            // Err: the signature is not base64url or not the key's size.
            Ok(false) | Err(_) => Err(AuthError::BadSignature),
        }
    }
}

fn load_kid_key(k: &crate::config::AuthKey) -> Result<KidKey, AuthError> {
    let alg = KeyAlg::parse(&k.alg).ok_or_else(|| AuthError::KeyFile {
        kid: k.kid.clone(),
        path: PathBuf::new(),
        message: format!("alg {:?} is not one of HS256, RS256, ES256, EdDSA", k.alg),
    })?;
    let path = match alg {
        KeyAlg::Hs256 => k.secret_file.as_ref(),
        _ => k.public_key_file.as_ref(),
    };
    let Some(path) = path else {
        return Err(AuthError::KeyFile {
            kid: k.kid.clone(),
            path: PathBuf::new(),
            message: format!("alg {} needs {}", alg.name(), if alg == KeyAlg::Hs256 { "secret_file" } else { "public_key_file" }),
        });
    };
    let err = |message: String| AuthError::KeyFile { kid: k.kid.clone(), path: path.clone(), message };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let key = match alg {
        KeyAlg::Hs256 => {
            let s = trim_newline(&bytes);
            if s.len() < 16 {
                return Err(err("secret must be at least 16 bytes".into()));
            }
            jsonwebtoken::DecodingKey::from_secret(s)
        }
        KeyAlg::Rs256 => jsonwebtoken::DecodingKey::from_rsa_pem(&bytes).map_err(|e| err(format!("not an RSA public key PEM: {e}")))?,
        KeyAlg::Es256 => jsonwebtoken::DecodingKey::from_ec_pem(&bytes).map_err(|e| err(format!("not an EC public key PEM: {e}")))?,
        KeyAlg::EdDsa => {
            jsonwebtoken::DecodingKey::from_ed_pem(&bytes).map_err(|e| err(format!("not an Ed25519 public key PEM: {e}")))?
        }
    };
    Ok(KidKey { alg, key })
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &b[..end]
}

/// Signs a token for `user` with a named key (`ringgate token --kid`):
/// `key_file` is the HS256 secret file or the PKCS#8 PEM private key.
pub fn mint_with_key(kid: &str, alg: KeyAlg, key_file: &Path, user: &str, now_s: u64, ttl_s: u64) -> Result<String, AuthError> {
    let err = |message: String| AuthError::KeyFile { kid: kid.to_string(), path: key_file.to_path_buf(), message };
    let bytes = std::fs::read(key_file).map_err(|e| err(e.to_string()))?;
    let key = match alg {
        KeyAlg::Hs256 => jsonwebtoken::EncodingKey::from_secret(trim_newline(&bytes)),
        KeyAlg::Rs256 => jsonwebtoken::EncodingKey::from_rsa_pem(&bytes).map_err(|e| err(format!("not an RSA private key PEM: {e}")))?,
        KeyAlg::Es256 => jsonwebtoken::EncodingKey::from_ec_pem(&bytes).map_err(|e| err(format!("not a PKCS#8 EC private key PEM: {e}")))?,
        KeyAlg::EdDsa => {
            jsonwebtoken::EncodingKey::from_ed_pem(&bytes).map_err(|e| err(format!("not a PKCS#8 Ed25519 private key PEM: {e}")))?
        }
    };
    let mut header = jsonwebtoken::Header::new(alg.jws());
    header.kid = Some(kid.to_string());
    let claims = serde_json::json!({ "sub": user, "iat": now_s, "exp": now_s.saturating_add(ttl_s) });
    jsonwebtoken::encode(&header, &claims, &key).map_err(|e| err(format!("cannot sign: {e}")))
}

/// Where the secret came from (the server prints a hint when it made one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Config,
    File(PathBuf),
    /// Read from `<data_dir>/jwt-secret`, created by an earlier start.
    DataDir(PathBuf),
    /// Created just now at this path.
    Generated(PathBuf),
}

impl SecretSource {
    /// Where the secret came from, for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Config => "auth.jwt_secret in the configuration".into(),
            SecretSource::File(p) | SecretSource::DataDir(p) | SecretSource::Generated(p) => {
                let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
                abs.display().to_string()
            }
        }
    }
}

/// Loads the secret from config, from `jwt_secret_file`, or from (creating
/// if needed) `<data_dir>/jwt-secret` with 32 random bytes, hex, mode 0600.
pub fn load_or_create_secret(cfg: &AuthConfig, data_dir: &Path) -> Result<(Vec<u8>, SecretSource), AuthError> {
    load_secret(cfg, data_dir, true)
}

/// The same resolution as [`load_or_create_secret`]; with `create` false a
/// missing `<data_dir>/jwt-secret` is an error instead of a new secret (a
/// token signed with a secret no server uses is worse than no token).
pub fn load_secret(cfg: &AuthConfig, data_dir: &Path, create: bool) -> Result<(Vec<u8>, SecretSource), AuthError> {
    if let Some(s) = &cfg.jwt_secret {
        return Ok((s.as_bytes().to_vec(), SecretSource::Config));
    }
    let err = |path: &Path, message: String| AuthError::Secret { path: path.to_path_buf(), message };
    if let Some(p) = &cfg.jwt_secret_file {
        let text = std::fs::read_to_string(p).map_err(|e| err(p, e.to_string()))?;
        let s = text.trim_end_matches(['\n', '\r']);
        if s.len() < 16 {
            return Err(err(p, "secret must be at least 16 bytes".into()));
        }
        return Ok((s.as_bytes().to_vec(), SecretSource::File(p.clone())));
    }
    let path = data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let s = text.trim_end_matches(['\n', '\r']);
            if s.len() < 16 {
                return Err(err(&path, "secret must be at least 16 bytes (delete the file to regenerate)".into()));
            }
            Ok((s.as_bytes().to_vec(), SecretSource::DataDir(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
            Err(AuthError::Secret {
                path: abs,
                message: "does not exist: `ringgate serve` creates it on first start, so run this where the server runs (its working directory), or pass the server's --config; --create-secret makes a new one".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| err(data_dir, format!("cannot create data directory: {e}")))?;
            let mut raw = [0u8; 32];
            getrandom::getrandom(&mut raw).map_err(|e| err(&path, format!("no randomness: {e}")))?;
            let secret = hex::encode(raw);
            write_private(&path, format!("{secret}\n").as_bytes()).map_err(|e| err(&path, e.to_string()))?;
            Ok((secret.into_bytes(), SecretSource::Generated(path)))
        }
        Err(e) => Err(err(&path, e.to_string())),
    }
}

/// Creates `path` with mode 0600, failing if it exists (two instances racing
/// on first start must not overwrite each other's secret).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_verify() {
        let k = JwtKey::new(b"0123456789abcdef");
        let t = k.mint("alice", 1000, 60);
        assert_eq!(k.verify(&t, 1000).unwrap(), Claims { sub: "alice".into(), exp: 1060 });
        assert_eq!(k.verify(&t, 1060), Err(AuthError::Expired { exp: 1060, now: 1060 }));
    }

    #[test]
    fn wrong_secret_and_garbage_refused() {
        let t = JwtKey::new(b"0123456789abcdef").mint("alice", 1000, 60);
        let other = JwtKey::new(b"fedcba9876543210");
        assert_eq!(other.verify(&t, 1000), Err(AuthError::BadSignature));
        for bad in ["", "a.b", "a.b.c.d", "...", "x.y.z"] {
            assert!(other.verify(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn alg_none_refused() {
        let k = JwtKey::new(b"0123456789abcdef");
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let c = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","exp":99999999999}"#);
        assert!(k.verify(&format!("{h}.{c}."), 0).is_err());
    }

    fn sign(k: &JwtKey, claims: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let c = URL_SAFE_NO_PAD.encode(claims.as_bytes());
        let mut mac = k.mac.clone();
        mac.update(format!("{h}.{c}").as_bytes());
        format!("{h}.{c}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn leeway_nbf_and_huge_claims() {
        let rules = ClaimRules { leeway_s: 30, ..ClaimRules::default() };
        let k = JwtKey::with_rules(b"0123456789abcdef", rules);
        // exp within the leeway still works; past it, not.
        let t = sign(&k, r#"{"sub":"a","exp":1000}"#);
        assert!(k.verify(&t, 1029).is_ok());
        assert_eq!(k.verify(&t, 1030), Err(AuthError::Expired { exp: 1000, now: 1030 }));
        // nbf in the future beyond the leeway is refused, within it accepted.
        let t = sign(&k, r#"{"sub":"a","exp":5000,"nbf":1100}"#);
        assert_eq!(k.verify(&t, 1000), Err(AuthError::NotYetValid { nbf: 1100, now: 1000 }));
        assert!(k.verify(&t, 1070).is_ok());
        // Huge values saturate instead of overflowing anything.
        for claims in [
            r#"{"sub":"a","exp":18446744073709551615}"#,
            r#"{"sub":"a","exp":1e300}"#,
            r#"{"sub":"a","exp":1e300,"nbf":0}"#,
        ] {
            let c = k.verify(&sign(&k, claims), u64::MAX - 1).unwrap();
            assert_eq!(c.exp, u64::MAX, "{claims}");
        }
        assert_eq!(k.verify(&sign(&k, r#"{"sub":"a","exp":5000,"nbf":1e300}"#), 0), Err(AuthError::NotYetValid { nbf: u64::MAX, now: 0 }));
        assert!(k.verify(&sign(&k, r#"{"sub":"a","exp":5000,"nbf":-1}"#), 0).is_err());
        assert!(k.verify(&sign(&k, r#"{"sub":"a","exp":5000,"nbf":"soon"}"#), 0).is_err());
    }

    #[test]
    fn sub_with_control_characters_refused() {
        let k = JwtKey::new(b"0123456789abcdef");
        for sub in [r"a\nb", r"\u001b[2J", "", r"x\u0085"] {
            let t = sign(&k, &format!(r#"{{"sub":"{sub}","exp":5000}}"#));
            assert!(matches!(k.verify(&t, 0), Err(AuthError::Malformed(_))), "{sub}");
        }
        let t = sign(&k, &format!(r#"{{"sub":"{}","exp":5000}}"#, "a".repeat(256)));
        assert!(k.verify(&t, 0).is_err());
    }

    #[test]
    fn issuer_and_audience() {
        let rules = ClaimRules { leeway_s: 0, issuer: Some("idp".into()), audience: Some("rg".into()) };
        let k = JwtKey::with_rules(b"0123456789abcdef", rules);
        let ok = [r#"{"sub":"a","exp":5000,"iss":"idp","aud":"rg"}"#, r#"{"sub":"a","exp":5000,"iss":"idp","aud":["x","rg"]}"#];
        for c in ok {
            assert!(k.verify(&sign(&k, c), 0).is_ok(), "{c}");
        }
        let bad = [
            (r#"{"sub":"a","exp":5000,"aud":"rg"}"#, "iss"),
            (r#"{"sub":"a","exp":5000,"iss":"other","aud":"rg"}"#, "iss"),
            (r#"{"sub":"a","exp":5000,"iss":"idp"}"#, "aud"),
            (r#"{"sub":"a","exp":5000,"iss":"idp","aud":["x"]}"#, "aud"),
            (r#"{"sub":"a","exp":5000,"iss":"idp","aud":7}"#, "aud"),
        ];
        for (c, which) in bad {
            assert_eq!(k.verify(&sign(&k, c), 0), Err(AuthError::WrongClaim(which)), "{c}");
        }
    }

    #[test]
    fn secret_created_once_then_reused() {
        let d = tempfile::tempdir().unwrap();
        let (a, src) = load_or_create_secret(&AuthConfig::default(), d.path()).unwrap();
        assert!(matches!(src, SecretSource::Generated(_)));
        let (b, src) = load_or_create_secret(&AuthConfig::default(), d.path()).unwrap();
        assert!(matches!(src, SecretSource::DataDir(_)));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }
}
