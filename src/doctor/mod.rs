//! `ringgate doctor`: compares this host's kernel and process limits with a sysctl profile, computes how many connections it can hold, and applies profiles.
//!
//! The profiles are the files in `sysctl/`, embedded at build time, so the
//! binary checks against exactly what the repository documents. The check is
//! split in three so each part can be tested without the live machine:
//!
//! - [`parse_profile`]: sysctl.d text to settings;
//! - [`connection_ceiling`]: a pure function from [`Limits`] (numbers read
//!   from /proc, or given by a test) to the tightest limit and its name;
//! - [`apply_settings`]: writes settings under a sysctl root (`/proc/sys`
//!   for real, a temporary directory in tests).
//!
//! Exit codes: 0 all good; 1 the answer is "no" (the target does not fit, a
//! key could not be written); 2 the command could not do what was asked
//! (unknown profile, unreadable file, not root).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;


mod apply;
mod ceiling;
mod fmt;
mod live;
mod profile;
mod report;
#[cfg(test)]
mod tests;

pub use apply::*;
pub use ceiling::*;
pub use fmt::*;
pub use live::*;
pub use profile::*;
pub use report::*;

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

/// `ringgate doctor` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit status: 0 all good; 1 the target does not fit, or a key could not be written; \
2 the command could not run (unknown profile, unreadable file, --apply without root).\n\
Profiles are the files in sysctl/ (see sysctl/README.md), embedded in the binary.")]
pub struct DoctorArgs {
    /// Embedded profile to compare with: c1m (default), low-latency or loadgen.
    #[arg(long, value_name = "NAME", conflicts_with = "profile_file")]
    pub profile: Option<String>,
    /// A sysctl.d file to use instead of an embedded profile.
    #[arg(long, value_name = "PATH")]
    pub profile_file: Option<PathBuf>,
    /// Exit 1 unless this many connections fit under every limit of this host.
    #[arg(long, value_name = "N")]
    pub target_connections: Option<u64>,
    /// Print the report (or the apply results) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write the profile through /proc/sys (root only): `--apply NAME`, or
    /// `--apply` with --profile / --profile-file. Exit 1 if a key failed.
    #[arg(long, value_name = "PROFILE", num_args = 0..=1, conflicts_with = "target_connections")]
    #[allow(clippy::option_option)]
    pub apply: Option<Option<String>>,
}

/// Resolves the one profile the arguments name.
pub(super) fn selected_profile(a: &DoctorArgs) -> Result<Profile, String> {
    let from_apply = a.apply.as_ref().and_then(|x| x.as_deref());
    match (from_apply, a.profile.as_deref(), a.profile_file.as_deref()) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            Err("name the profile once: `--apply NAME`, or `--apply` with --profile NAME / --profile-file PATH".into())
        }
        (Some(name), None, None) | (None, Some(name), None) => embedded_profile(name).map_err(|e| e.to_string()),
        (None, None, Some(path)) => file_profile(path).map_err(|e| e.to_string()),
        (None, None, None) => {
            if a.apply.is_some() {
                Err("--apply needs a profile: `--apply c1m`, or `--apply --profile-file PATH`".into())
            } else {
                embedded_profile(DEFAULT_PROFILE).map_err(|e| e.to_string())
            }
        }
        (None, Some(_), Some(_)) => Err("--profile and --profile-file exclude each other".into()),
    }
}

/// Runs `ringgate doctor`.
pub fn run(a: DoctorArgs) -> ExitCode {
    let profile = match selected_profile(&a) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ringgate doctor: {e}");
            return ExitCode::from(2);
        }
    };
    if a.apply.is_some() {
        return run_apply(&profile, a.json);
    }
    let report = check(&profile, a.target_connections);
    if a.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("ringgate doctor: cannot serialize the report: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", render_text(&report));
    }
    match &report.target {
        Some(t) if !t.fits => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

pub(super) fn run_apply(profile: &Profile, json: bool) -> ExitCode {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        let install = if PROFILES.iter().any(|(n, _)| *n == profile.name) {
            format!("sudo cp sysctl/{0}.conf /etc/sysctl.d/60-ringgate-{0}.conf && sudo sysctl --system", profile.name)
        } else {
            format!("sudo cp {} /etc/sysctl.d/ && sudo sysctl --system", profile.name)
        };
        eprintln!(
            "ringgate doctor: --apply writes /proc/sys and must run as root (effective uid is {euid}); nothing was changed.\n\
             Run it with sudo, or install the profile for every boot: {install}"
        );
        return ExitCode::from(2);
    }
    let results = apply_settings(Path::new(PROC_SYS), &profile.settings);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            profile: &'a str,
            results: &'a [Applied],
            failed: usize,
        }
        let failed = results.iter().filter(|r| r.is_fatal()).count();
        match serde_json::to_string_pretty(&Out { profile: &profile.name, results: &results, failed }) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("ringgate doctor: cannot serialize the results: {e}"),
        }
    } else {
        print!("{}", render_apply(profile, &results));
    }
    if results.iter().any(Applied::is_fatal) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

