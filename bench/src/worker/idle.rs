//! The idle job: hold connections opened at a paced rate until told to close (any target and protocol).

use super::*;

pub(super) async fn idle(c: Rc<Ctx>, job: IdleJob) -> Res<Tally> {
    let warm = c.mine(job.warmup);
    let main: Vec<u64> = c.mine(job.warmup + job.conns).into_iter().filter(|&i| i >= job.warmup).collect();
    let open = |i: u64| {
        let c = c.clone();
        let u = format!("{}{i}", job.user_prefix);
        async move { c.establish(i, &u, 0, true).await.map(|(conn, _, _)| conn) }
    };
    let (mut held, t) = ramp(&c, &warm, 0.0, job.max_inflight, open).await;
    c.report("warm", t);
    c.wait_cmd(1).await?;
    let rate = job.rate_per_s / c.total as f64;
    let (more, t) = ramp(&c, &main, rate, job.max_inflight, open).await;
    held.extend(more);
    c.report("ready", t);
    c.wait_cmd(2).await?;
    let mut t = Tally::default();
    t.add("closed", held.len() as u64);
    drop(held);
    Ok(t)
}
