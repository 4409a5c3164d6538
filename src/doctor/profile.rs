//! Sysctl profiles: the embedded files, parsing sysctl.d text into settings, key validation and floor keys.

use super::*;

// ---------------------------------------------------------------------------
// Profiles
// ---------------------------------------------------------------------------

/// The embedded profiles, by name. The files in `sysctl/` are the source of
/// truth; `sysctl/README.md` says what each is for.
pub const PROFILES: &[(&str, &str)] = &[
    ("c1m", include_str!("../../sysctl/c1m.conf")),
    ("low-latency", include_str!("../../sysctl/low-latency.conf")),
    ("loadgen", include_str!("../../sysctl/loadgen.conf")),
];

/// The profile checked when none is named: the gateway's production profile.
pub const DEFAULT_PROFILE: &str = "c1m";

/// Keys whose profile value is a floor, not a target: a live value above it
/// is fine and `--apply` never lowers it. systemd (>= 240) raises the first
/// two to their maximum at boot; lowering a queue length or a file limit
/// only ever loses connections.
pub const FLOOR_KEYS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.core.netdev_max_backlog",
];

/// One `key = value` line of a sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// The key as written, without a leading `-`.
    pub key: String,
    /// The value with runs of whitespace folded to one space (the kernel
    /// prints multi-value keys with tabs; the files use spaces).
    pub value: String,
    /// 1-based line in the file, for messages.
    pub line: usize,
    /// The key was written `-key`: sysctl.d's "a failure to set this is not
    /// an error" (e.g. a key that only exists with a module loaded).
    pub ignore_failure: bool,
}

impl Setting {
    /// The key in dotted form, for lookups and display.
    pub fn canonical_key(&self) -> String {
        canonical_key(&self.key)
    }

    /// The file under a sysctl root (normally `/proc/sys`) holding the key.
    pub fn path_under(&self, root: &Path) -> PathBuf {
        root.join(relative_proc_path(&self.key))
    }
}

/// A named set of settings.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Embedded profile name, or the file's path.
    pub name: String,
    pub settings: Vec<Setting>,
}

/// Why a profile could not be used. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; the profiles are: {known} (or use --profile-file PATH)")]
    Unknown { name: String, known: String },
    #[error("cannot read profile file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} line {line}: {message}")]
    Syntax { origin: String, line: usize, message: String },
    #[error("{origin} sets no keys")]
    Empty { origin: String },
}

/// Looks up an embedded profile by name and parses it.
pub fn embedded_profile(name: &str) -> Result<Profile, ProfileError> {
    let Some((_, text)) = PROFILES.iter().find(|(n, _)| *n == name) else {
        let known = PROFILES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
        return Err(ProfileError::Unknown { name: name.to_string(), known });
    };
    let origin = format!("sysctl/{name}.conf");
    Ok(Profile { name: name.to_string(), settings: parse_profile(&origin, text)? })
}

/// Reads and parses a sysctl.d file.
pub fn file_profile(path: &Path) -> Result<Profile, ProfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read { path: path.to_path_buf(), source })?;
    let origin = path.display().to_string();
    Ok(Profile { name: origin.clone(), settings: parse_profile(&origin, &text)? })
}

/// Parses sysctl.d text (see sysctl.d(5)): `key = value` lines; lines
/// starting with `#` or `;` are comments; a leading `-` on the key marks a
/// setting whose failure is not an error; a key containing `/` uses slashes
/// as separators. Globs are refused rather than silently matching nothing,
/// and so is a key set twice (in one profile that is always a mistake).
pub fn parse_profile(origin: &str, text: &str) -> Result<Vec<Setting>, ProfileError> {
    let err = |line: usize, message: String| ProfileError::Syntax { origin: origin.to_string(), line, message };
    let mut out: Vec<Setting> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let t = raw.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        let Some((k, v)) = t.split_once('=') else {
            return Err(err(line, format!("expected `key = value`, found {t:?}")));
        };
        let mut key = k.trim();
        let ignore_failure = key.starts_with('-');
        if ignore_failure {
            key = key[1..].trim_start();
        }
        validate_key(key).map_err(|m| err(line, m))?;
        let value = normalize_value(v);
        if value.is_empty() {
            return Err(err(line, format!("{key} has no value")));
        }
        let canon = canonical_key(key);
        if let Some(first) = out.iter().find(|s| s.canonical_key() == canon) {
            return Err(err(line, format!("{key} is already set on line {}", first.line)));
        }
        out.push(Setting { key: key.to_string(), value, line, ignore_failure });
    }
    if out.is_empty() {
        return Err(ProfileError::Empty { origin: origin.to_string() });
    }
    Ok(out)
}

pub(super) fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key before `=`".into());
    }
    if key.contains(['*', '?', '[', ']']) {
        return Err(format!("{key}: glob keys are not supported; list each key"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{key:?}: a key has no spaces"));
    }
    // The key becomes a path under /proc/sys: refuse anything that could
    // leave it.
    let rel = relative_proc_path(key);
    if rel.is_empty() || key.starts_with('/') || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(format!("{key}: not a sysctl key (empty or `.`/`..` component)"));
    }
    Ok(())
}

/// The path of a key relative to /proc/sys. sysctl.d(5): if the key uses
/// `/` then dots are literal (interface names like `eth0.100`), otherwise
/// dots separate.
pub(super) fn relative_proc_path(key: &str) -> String {
    if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    }
}

pub(super) fn canonical_key(key: &str) -> String {
    key.replace('/', ".")
}

/// Folds whitespace so `4096\t16384` (what /proc prints) equals `4096 16384`.
pub fn normalize_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn is_floor_key(canonical: &str) -> bool {
    FLOOR_KEYS.contains(&canonical)
}

/// True when `live` is above `wanted` for a floor key (both single numbers).
pub(super) fn live_exceeds_floor(canonical: &str, live: &str, wanted: &str) -> bool {
    is_floor_key(canonical)
        && matches!((live.trim().parse::<u128>(), wanted.trim().parse::<u128>()), (Ok(l), Ok(w)) if l > w)
}

