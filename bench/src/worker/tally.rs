//! What a worker stage produced: counters, maxima, latency histograms and a bounded sample of errors, merged across threads and processes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::Hist;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    #[serde(default)]
    pub max_ms: BTreeMap<String, u64>,
    #[serde(default)]
    pub hists: BTreeMap<String, Hist>,
    /// First few error messages, counted.
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
}

impl Tally {
    pub fn add(&mut self, name: &str, n: u64) {
        *self.counts.entry(name.to_string()).or_default() += n;
    }

    pub fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    pub fn max(&mut self, name: &str, ms: u64) {
        let e = self.max_ms.entry(name.to_string()).or_default();
        *e = (*e).max(ms);
    }

    pub fn hist(&mut self, name: &str) -> &mut Hist {
        self.hists.entry(name.to_string()).or_default()
    }

    pub fn error(&mut self, e: &dyn std::fmt::Display) {
        self.add("errors", 1);
        let msg: String = e.to_string().chars().take(120).collect();
        if self.errors.len() < 8 || self.errors.contains_key(&msg) {
            *self.errors.entry(msg).or_default() += 1;
        }
    }

    /// One failed attempt: counted, and its error kept.
    pub fn fail(&mut self, e: &dyn std::fmt::Display) {
        self.add("failed", 1);
        self.error(e);
    }

    pub fn merge(&mut self, o: &Tally) {
        for (k, v) in &o.counts {
            self.add(k, *v);
        }
        for (k, v) in &o.max_ms {
            self.max(k, *v);
        }
        for (k, h) in &o.hists {
            self.hist(k).merge(h);
        }
        for (k, v) in &o.errors {
            if self.errors.len() < 8 || self.errors.contains_key(k) {
                *self.errors.entry(k.clone()).or_default() += v;
            }
        }
    }
}
