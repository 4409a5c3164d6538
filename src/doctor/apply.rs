//! Applying a profile: writing settings under a sysctl root, never lowering floor keys, and rendering what changed.

use super::*;

// ---------------------------------------------------------------------------
// Applying a profile
// ---------------------------------------------------------------------------

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Changed { old: String, new: String },
    Unchanged { value: String },
    /// A floor key already above the profile: left alone.
    KeptHigher { live: String, profile: String },
    /// Not in this kernel or network namespace: reported, not fatal.
    Absent,
    Failed { old: Option<String>, wanted: String, error: String },
}

/// One key's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub key: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The setting was marked `-key`: a failure is reported, not fatal.
    pub ignore_failure: bool,
}

impl Applied {
    /// A failure that makes the command exit non-zero.
    pub fn is_fatal(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. }) && !self.ignore_failure
    }
}

/// Writes each setting under `root` (normally `/proc/sys`), reading the old
/// value first and the stored value after, so a kernel that silently
/// adjusts a value is caught. Every key is tried; nothing stops at the first
/// failure, so the report is complete.
pub fn apply_settings(root: &Path, settings: &[Setting]) -> Vec<Applied> {
    settings
        .iter()
        .map(|s| {
            let key = s.canonical_key();
            let outcome = apply_one(root, s, &key);
            Applied { key, outcome, ignore_failure: s.ignore_failure }
        })
        .collect()
}

pub(super) fn apply_one(root: &Path, s: &Setting, key: &str) -> Outcome {
    let path = s.path_under(root);
    let old = match read_sysctl(root, &s.key) {
        Live::Absent => return Outcome::Absent,
        Live::Unreadable(e) => {
            return Outcome::Failed { old: None, wanted: s.value.clone(), error: format!("cannot read {}: {e}", path.display()) }
        }
        Live::Value(v) => v,
    };
    if old == s.value {
        return Outcome::Unchanged { value: old };
    }
    if live_exceeds_floor(key, &old, &s.value) {
        return Outcome::KeptHigher { live: old, profile: s.value.clone() };
    }
    // No O_CREAT: a key that vanished between the read and the write is a
    // failure, not a new file. O_TRUNC is what sysctl(8) does too.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, s.value.as_bytes()));
    if let Err(e) = written {
        return Outcome::Failed { old: Some(old), wanted: s.value.clone(), error: e.to_string() };
    }
    match read_sysctl(root, &s.key) {
        Live::Value(now) if now == s.value => Outcome::Changed { old, new: now },
        Live::Value(now) => Outcome::Failed {
            old: Some(old),
            wanted: s.value.clone(),
            error: format!("the kernel accepted the write but stores {now:?}"),
        },
        other => Outcome::Failed { old: Some(old), wanted: s.value.clone(), error: format!("cannot read back: {other:?}") },
    }
}

/// The apply results as lines for an operator.
pub fn render_apply(profile: &Profile, results: &[Applied]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "ringgate doctor --apply {}: {} keys through {PROC_SYS}", profile.name, results.len());
    let w = results.iter().map(|r| r.key.len()).max().unwrap_or(0);
    let mut counts = [0usize; 5];
    for r in results {
        let (i, tag, text) = match &r.outcome {
            Outcome::Changed { old, new } => (0, "changed", format!("{old} -> {new}")),
            Outcome::Unchanged { value } => (1, "unchanged", value.clone()),
            Outcome::KeptHigher { live, profile } => {
                (2, "kept", format!("{live} (above the profile's {profile}; this limit is never lowered)"))
            }
            Outcome::Absent => (3, "absent", "not in this kernel or network namespace (not an error)".to_string()),
            Outcome::Failed { old, wanted, error } => (
                4,
                if r.ignore_failure { "failed (ignored)" } else { "FAILED" },
                format!("{} -> {wanted}: {error}", old.as_deref().unwrap_or("?")),
            ),
        };
        counts[i] += 1;
        let _ = writeln!(o, "  {tag:<16} {:<w$}  {text}", r.key);
    }
    let ignored = results.iter().filter(|r| r.ignore_failure && matches!(r.outcome, Outcome::Failed { .. })).count();
    let ignored = if ignored > 0 { format!(" ({ignored} ignored: marked `-key`)") } else { String::new() };
    let _ = writeln!(
        o,
        "{} changed, {} unchanged, {} kept, {} absent, {} failed{ignored}.",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    );
    if counts[0] > 0 {
        let _ = writeln!(
            o,
            "These values last until reboot; to keep them install the profile in /etc/sysctl.d/ (see sysctl/README.md)."
        );
    }
    o
}

