//! Validation: every rule a parse cannot check (ranges, addresses,
//! combinations of keys), gathered so that `config check` reports all of
//! them in one run. Separate from the struct definitions because the rules
//! span sections (a fleet needs a shared route key) and read other layers'
//! limits (TLS record limits, session backoff).

use super::{AuthKey, Config, ConfigError, FleetConfig, Fsync};

impl AuthKey {
    /// The problems of this entry `validate()` can see without reading files.
    fn problems(&self, i: usize, errs: &mut Vec<String>) {
        let at = format!("auth.keys[{i}] (kid {:?})", self.kid);
        if self.kid.is_empty() || self.kid.len() > 128 {
            errs.push(format!("{at}: kid must be 1..=128 bytes"));
        }
        match (self.alg.as_str(), &self.public_key_file, &self.secret_file) {
            ("HS256", None, Some(_)) => {}
            ("HS256", _, _) => errs.push(format!("{at}: alg HS256 takes secret_file (and no public_key_file)")),
            ("RS256" | "ES256" | "EdDSA", Some(_), None) => {}
            ("RS256" | "ES256" | "EdDSA", _, _) => {
                errs.push(format!("{at}: alg {} takes public_key_file (and no secret_file)", self.alg))
            }
            (other, _, _) => errs.push(format!("{at}: alg {other:?} is not one of HS256, RS256, ES256, EdDSA")),
        }
    }
}

impl FleetConfig {
    /// Every problem with the section (FLEET.md: `config check` reports all).
    pub fn problems(&self, errs: &mut Vec<String>) {
        for u in &self.redis {
            match u.split_once("://") {
                Some(("redis" | "rediss", rest)) if !rest.is_empty() => {
                    if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
                        errs.push(format!("fleet.redis: {u:?} is not a valid Redis URL: {e}"));
                    }
                }
                _ => errs.push(format!("fleet.redis: {u:?} is not a redis:// or rediss:// URL")),
            }
        }
        if let Some(id) = &self.node_id {
            if id.trim().is_empty() {
                errs.push("fleet.node_id must not be empty".into());
            } else if id.len() > 64 || id.contains([',', ' ', ':', '{', '}']) {
                errs.push(format!("fleet.node_id = {id:?}: at most 64 bytes, no spaces, commas, colons or braces"));
            }
        }
        if let Some(h) = &self.advertise_host {
            if h.trim().is_empty() {
                errs.push("fleet.advertise_host must not be empty when set".into());
            }
        }
        if !(50..=60_000).contains(&self.heartbeat_ms) {
            errs.push(format!("fleet.heartbeat_ms = {} is outside 50..=60000", self.heartbeat_ms));
        }
        if !(10..=600_000).contains(&self.engine_timeout_ms) {
            errs.push(format!("fleet.engine_timeout_ms = {} is outside 10..=600000", self.engine_timeout_ms));
        }
        if !(1..=16_777_216).contains(&self.max_engine_inflight) {
            errs.push(format!("fleet.max_engine_inflight = {} is outside 1..=16777216", self.max_engine_inflight));
        }
        if self.max_clock_skew_ms > 600_000 {
            errs.push(format!("fleet.max_clock_skew_ms = {} is outside 0..=600000", self.max_clock_skew_ms));
        }
    }
}

impl Config {
    /// Checks values a parse cannot: ranges, addresses, combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let errs = self.problems();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs.join("; ")))
        }
    }

    /// Every problem `validate` would refuse, not just the first, so one
    /// `config check` run shows everything to fix.
    pub fn problems(&self) -> Vec<String> {
        let mut errs: Vec<String> = Vec::new();
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!("server.listen = {:?} is not an IP:port address", self.server.listen));
        }
        if self.server.admin_listen.parse::<std::net::SocketAddr>().is_err() {
            errs.push(format!("server.admin_listen = {:?} is not an IP:port address", self.server.admin_listen));
        }
        if self.server.workers > 256 {
            errs.push(format!("server.workers = {} is more than 256", self.server.workers));
        }
        if !(1..=crate::runtime::tls_record::MAX_RECORDS_PER_KEY).contains(&self.tls.key_update_after_records) {
            errs.push(format!(
                "tls.key_update_after_records = {} must be between 1 and {} (AES-GCM's safe record limit, RFC 8446 §5.5)",
                self.tls.key_update_after_records,
                crate::runtime::tls_record::MAX_RECORDS_PER_KEY
            ));
        }
        if self.server.backlog == 0 {
            errs.push("server.backlog must be at least 1".into());
        }
        let mut kids = std::collections::HashSet::new();
        for (i, k) in self.auth.keys.iter().enumerate() {
            k.problems(i, &mut errs);
            if !kids.insert(k.kid.as_str()) {
                errs.push(format!("auth.keys[{i}]: kid {:?} is used twice", k.kid));
            }
        }
        if self.tls.ticket_key_file.is_some() && !self.tls.session_tickets {
            errs.push("tls.ticket_key_file is set but tls.session_tickets = false: set one or the other".into());
        }
        let s = &self.session;
        if s.heartbeat_s == 0 {
            errs.push("session.heartbeat_s must be at least 1".into());
        }
        if s.handshake_timeout_ms == 0 {
            errs.push("session.handshake_timeout_ms must be at least 1".into());
        }
        if s.ack_timeout_ms == 0 {
            errs.push("session.ack_timeout_ms must be at least 1".into());
        }
        if s.max_retries > crate::proto::session::MAX_BACKOFF_DOUBLINGS {
            errs.push(format!(
                "session.max_retries = {} is more than {} (the timeout doubles each retry: 5 s x 2^8 is already 21 minutes)",
                s.max_retries,
                crate::proto::session::MAX_BACKOFF_DOUBLINGS
            ));
        }
        if s.inflight_window == 0 || s.inflight_window > 65_536 {
            errs.push(format!("session.inflight_window = {} must be between 1 and 65536", s.inflight_window));
        }
        // The smallest useful frame is a CONNECT with a short token; the largest
        // is bounded so one peer cannot make us buffer more than 16 MiB.
        if s.max_frame < 256 || s.max_frame > 16 * 1024 * 1024 {
            errs.push(format!("session.max_frame = {} must be between 256 and 16777216", s.max_frame));
        }
        if s.dedup_per_device == 0 {
            errs.push("session.dedup_per_device must be at least 1".into());
        }
        if self.store.segment_max_bytes < (1 << 20) {
            errs.push(format!("store.segment_max_bytes = {} is below 1 MiB", self.store.segment_max_bytes));
        }
        if self.store.fsync == Fsync::Interval && self.store.fsync_interval_ms == 0 {
            errs.push("store.fsync_interval_ms must be at least 1 with fsync = \"interval\"".into());
        }
        if self.store.inbox_max_messages == 0 {
            errs.push("store.inbox_max_messages must be at least 1".into());
        }
        if self.store.inbox_max_age_s == 0 {
            errs.push("store.inbox_max_age_s must be at least 1".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            errs.push("tls.cert_file and tls.key_file must be set together".into());
        }
        if self.auth.jwt_secret.is_some() && self.auth.jwt_secret_file.is_some() {
            errs.push("set auth.jwt_secret or auth.jwt_secret_file, not both".into());
        }
        if let Some(sec) = &self.auth.jwt_secret {
            if sec.len() < 16 {
                errs.push("auth.jwt_secret must be at least 16 bytes".into());
            }
        }
        if let Err(m) = self.limits.validate() {
            errs.push(m);
        }
        let a = &self.admin;
        if a.token.is_some() && a.token_file.is_some() {
            errs.push("set admin.token or admin.token_file, not both".into());
        }
        if a.token.as_ref().is_some_and(|t| t.trim().len() < 16) {
            errs.push("admin.token must be at least 16 bytes".into());
        }
        if a.max_body_bytes < 1024 || a.max_body_bytes > 64 << 20 {
            errs.push(format!("admin.max_body_bytes = {} must be between 1024 and 67108864", a.max_body_bytes));
        }
        if a.max_connections == 0 || a.max_connections > 1024 {
            errs.push(format!("admin.max_connections = {} must be between 1 and 1024", a.max_connections));
        }
        if a.idempotency_ttl_s == 0 {
            errs.push("admin.idempotency_ttl_s must be at least 1".into());
        }
        if a.idempotency_max_keys == 0 {
            errs.push("admin.idempotency_max_keys must be at least 1".into());
        }
        if a.ledger_max_entries == 0 {
            errs.push("admin.ledger_max_entries must be at least 1 (ledger_retention_s = 0 turns the ledger off)".into());
        }
        for (name, members) in &self.groups {
            if let Err(e) = crate::limits::check_name(name) {
                errs.push(format!("group name {name:?} is invalid: {e} (names are 1..=255 bytes of UTF-8 without control characters)"));
            }
            for m in members {
                if let Err(e) = crate::limits::check_name(m) {
                    errs.push(format!("group {name:?} has an invalid member id {m:?}: {e}"));
                }
            }
        }
        if self.store.data_dir.as_os_str().is_empty() {
            errs.push("store.data_dir must not be empty (\"\" would put the secret, certificate and log in the working directory by accident; write \".\" to mean it)".into());
        }
        self.route_problems(&mut errs);
        for o in &self.web.allowed_origins {
            if o != "null" && !origin_pattern_ok(o) {
                errs.push(format!("web.allowed_origins: {o:?} is not scheme://host[:port] or scheme://*.domain[:port]"));
            }
        }
        if self.web.keepalive_idle_s == 0 {
            errs.push("web.keepalive_idle_s must be at least 1".into());
        }
        if self.web.poll_timeout_s == 0 || self.web.poll_timeout_s > 3600 {
            errs.push("web.poll_timeout_s must be 1..=3600".into());
        }
        if self.web.deflate {
            errs.push("web.deflate = true: permessage-deflate is not implemented; set it to false".into());
        }
        if let Some(f) = &self.fleet {
            f.problems(&mut errs);
            // Every node must sign routes with the same key, or a client
            // holding one node's route rejects the others' (FLEET.md).
            if f.enabled() && self.route.signing_key_file.is_none() {
                errs.push(
                    "[fleet] needs route.signing_key_file: every node of a fleet signs routes with the same key, \
                     so a per-node <data_dir>/route-key.pem cannot be used"
                        .into(),
                );
            }
        }
        errs
    }

    fn route_problems(&self, errs: &mut Vec<String>) {
        let r = &self.route;
        if r.ttl_s == 0 {
            errs.push("route.ttl_s must be at least 1".into());
        }
        if r.attempt_timeout_ms == 0 {
            errs.push("route.attempt_timeout_ms must be at least 1".into());
        }
        if r.backoff_base_ms == 0 || r.backoff_cap_ms < r.backoff_base_ms {
            errs.push(format!(
                "route.backoff_base_ms = {} must be at least 1 and at most route.backoff_cap_ms = {}",
                r.backoff_base_ms, r.backoff_cap_ms
            ));
        }
        if !(0.0..=1.0).contains(&r.backoff_jitter) {
            errs.push(format!("route.backoff_jitter = {} must be between 0 and 1", r.backoff_jitter));
        }
        if r.feedback_window_s == 0 {
            errs.push("route.feedback_window_s must be at least 1".into());
        }
        if r.public_host.as_deref().is_some_and(|h| h.is_empty() || h.contains(['/', ' ', ':'])) {
            errs.push("route.public_host must be a bare host name (no port, no scheme)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in r.endpoints.iter().enumerate() {
            let at = format!("route.endpoints[{i}] (id {:?})", e.id);
            if e.id.is_empty() || e.id.len() > 64 || e.id.contains([',', '&', '=', ' ']) {
                errs.push(format!("{at}: id must be 1..=64 bytes without commas, spaces, '&' or '='"));
            }
            if !seen.insert(e.id.as_str()) {
                errs.push(format!("{at}: id is used twice"));
            }
            if !["tls", "tcp", "wss", "ws", "sse", "lp"].contains(&e.transport.as_str()) {
                errs.push(format!("{at}: transport {:?} is not one of tls, tcp, wss, ws, sse, lp", e.transport));
            }
            if e.host.is_none() && e.addr.is_none() {
                errs.push(format!("{at}: needs host or addr"));
            }
            if let Some(a) = &e.addr {
                if a.parse::<std::net::IpAddr>().is_err() {
                    errs.push(format!("{at}: addr {a:?} is not an IP address"));
                }
            }
            if e.port == 0 {
                errs.push(format!("{at}: port must not be 0"));
            }
        }
    }
}

/// `scheme://host[:port]` or `scheme://*.domain[:port]`, nothing after.
fn origin_pattern_ok(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    !scheme.is_empty() && !rest.is_empty() && !rest.contains(['/', '?', '#', ' ']) && !rest.starts_with(':')
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn invalid_values_are_explained() {
        let mut c = Config::default();
        c.store.segment_max_bytes = 1000;
        assert!(c.validate().unwrap_err().to_string().contains("segment_max_bytes"));
        let mut c = Config::default();
        c.server.listen = "nowhere".into();
        assert!(c.validate().unwrap_err().to_string().contains("server.listen"));
        let mut c = Config::default();
        c.session.max_frame = 10;
        assert!(c.validate().unwrap_err().to_string().contains("max_frame"));
        let c = Config::from_toml_str("[store]\ndurability = \"disk\"\n").unwrap_err().to_string();
        assert!(c.contains("disk"), "{c}");
    }
}
