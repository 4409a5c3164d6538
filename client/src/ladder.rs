//! Ladder connect: try endpoints in order, starting the next one `stagger` after the last (or at once when all started ones failed), first CONNACK 0 wins.
//!
//! Why staggered and not sequential: a dead address (blackholed SYN, a
//! middlebox that accepts TCP and never answers TLS) costs a full attempt
//! timeout when tried alone; in the ladder it costs one stagger, while the
//! first attempt keeps its chance to finish. Why not all at once: every
//! attempt that reaches the node is a handshake it pays for, and two
//! sessions of one device replace each other (DISCONNECT 6).
//!
//! Losers are dropped: their tasks are aborted, which closes their sockets.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::route::{Endpoint, LadderPolicy};
use crate::Error;

/// How one attempt ended short of winning.
#[derive(Debug)]
pub enum AttemptError {
    /// This endpoint failed (refused, reset, timeout, TLS error, CONNACK 3):
    /// try the others, report it.
    Failed(String),
    /// An answer that no other endpoint would change (CONNACK 1, 2, 4):
    /// the ladder ends with it.
    Fatal(Error),
}

/// One line of what the ladder did, for `-v` and for reports.
#[derive(Debug, Clone)]
pub enum LadderEvent {
    Started { id: String, what: String, after: Duration },
    Failed { id: String, after: Duration, why: String },
    Won { id: String, what: String, after: Duration },
    Abandoned { id: String },
}

/// The winner and what to report on the next route fetch.
#[derive(Debug)]
pub struct Win<T> {
    pub value: T,
    pub endpoint: Endpoint,
    pub elapsed: Duration,
    /// Endpoints that failed, or were still pending when another won.
    pub failed: Vec<String>,
}

/// Runs the ladder over `endpoints` (in the given order, never re-sorted).
/// `attempt` dials one endpoint and must give up by itself; the ladder also
/// cuts it at `attempt_timeout_ms`.
pub async fn run<T, F, Fut>(
    endpoints: &[Endpoint],
    policy: &LadderPolicy,
    attempt: F,
    mut on_event: impl FnMut(LadderEvent),
) -> Result<Win<T>, (Error, Vec<String>)>
where
    T: Send + 'static,
    F: Fn(Endpoint) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>> + Send + 'static,
{
    let start = Instant::now();
    if endpoints.is_empty() {
        return Err((Error::NoEndpoints, Vec::new()));
    }
    let stagger = Duration::from_millis(policy.stagger_ms);
    let timeout = Duration::from_millis(policy.attempt_timeout_ms.max(1));
    let mut set: JoinSet<(usize, Result<T, AttemptError>)> = JoinSet::new();
    let mut started = 0usize;
    let mut pending: Vec<usize> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut last_error = String::new();
    let mut next_start = start;
    loop {
        let now = Instant::now();
        if started < endpoints.len() && (now >= next_start || set.is_empty()) {
            let i = started;
            let ep = endpoints[i].clone();
            on_event(LadderEvent::Started { id: ep.id.clone(), what: ep.display(), after: now - start });
            let fut = attempt(ep);
            set.spawn(async move {
                match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => (i, r),
                    Err(_) => (i, Err(AttemptError::Failed(format!("no CONNACK within {} ms", timeout.as_millis())))),
                }
            });
            pending.push(i);
            started += 1;
            next_start = now + stagger;
            continue;
        }
        let joined = if started < endpoints.len() {
            tokio::select! {
                j = set.join_next() => j,
                _ = tokio::time::sleep_until(next_start.into()) => continue,
            }
        } else {
            set.join_next().await
        };
        let Some(joined) = joined else {
            // Every endpoint was tried and failed.
            return Err((Error::AllEndpointsFailed(last_error), failed));
        };
        let (i, r) = match joined {
            Ok(x) => x,
            Err(e) => return Err((Error::Internal(format!("ladder attempt task: {e}")), failed)),
        };
        pending.retain(|p| *p != i);
        let ep = &endpoints[i];
        match r {
            Ok(value) => {
                let elapsed = start.elapsed();
                on_event(LadderEvent::Won { id: ep.id.clone(), what: ep.display(), after: elapsed });
                for p in &pending {
                    on_event(LadderEvent::Abandoned { id: endpoints[*p].id.clone() });
                    failed.push(endpoints[*p].id.clone());
                }
                // Dropping the set aborts the losers and closes their sockets.
                set.abort_all();
                return Ok(Win { value, endpoint: ep.clone(), elapsed, failed });
            }
            Err(AttemptError::Failed(why)) => {
                on_event(LadderEvent::Failed { id: ep.id.clone(), after: start.elapsed(), why: why.clone() });
                failed.push(ep.id.clone());
                last_error = format!("{}: {why}", ep.display());
            }
            Err(AttemptError::Fatal(e)) => {
                on_event(LadderEvent::Failed { id: ep.id.clone(), after: start.elapsed(), why: e.to_string() });
                set.abort_all();
                return Err((e, failed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: usize) -> Vec<Endpoint> {
        (0..n).map(|i| Endpoint::fallback(i, &format!("h{i}:1")).unwrap()).collect()
    }

    /// Endpoint 0 hangs, 1 fails at once, 2 answers: 1 starts one stagger
    /// after 0, 2 one stagger after 1 (0 is still pending), and 2 wins long
    /// before 0's attempt timeout.
    #[tokio::test(start_paused = true)]
    async fn stagger_then_immediate_after_failure() {
        let policy = LadderPolicy { stagger_ms: 1000, attempt_timeout_ms: 30_000 };
        let t0 = tokio::time::Instant::now();
        let win = run(
            &eps(3),
            &policy,
            |ep| async move {
                match ep.id.as_str() {
                    "builtin-0" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(0)
                    }
                    "builtin-1" => Err(AttemptError::Failed("refused".into())),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok(2)
                    }
                }
            },
            |_| {},
        )
        .await
        .unwrap();
        assert_eq!(win.value, 2);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(2010) && took < Duration::from_millis(2100), "{took:?}");
        assert_eq!(win.failed, vec!["builtin-1".to_string(), "builtin-0".to_string()]);
    }

    /// When every started attempt has failed the next starts at once.
    #[tokio::test(start_paused = true)]
    async fn next_starts_at_once_after_all_failed() {
        let policy = LadderPolicy { stagger_ms: 1000, attempt_timeout_ms: 30_000 };
        let t0 = tokio::time::Instant::now();
        let win = run(
            &eps(3),
            &policy,
            |ep| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if ep.id == "builtin-2" { Ok(()) } else { Err(AttemptError::Failed("reset".into())) }
            },
            |_| {},
        )
        .await
        .unwrap();
        assert!(t0.elapsed() < Duration::from_millis(100), "{:?}", t0.elapsed());
        assert_eq!(win.failed.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn all_fail_and_fatal_stops() {
        let policy = LadderPolicy { stagger_ms: 1000, attempt_timeout_ms: 500 };
        let r = run(&eps(2), &policy, |_| async { std::future::pending::<Result<u8, AttemptError>>().await }, |_| {}).await;
        let (e, failed) = r.unwrap_err();
        assert!(matches!(e, Error::AllEndpointsFailed(_)), "{e}");
        assert_eq!(failed.len(), 2);
        let r = run(&eps(2), &policy, |_| async { Err::<u8, _>(AttemptError::Fatal(Error::BadToken)) }, |_| {}).await;
        assert!(matches!(r.unwrap_err().0, Error::BadToken));
    }
}
