//! Which core owns a user: the one placement rule the runtime (routing, moving connections home) and the store (recovery splits the log by it, the store simulation checks it) both follow.
//!
//! It lives outside both so that the layers point one way: the store does
//! not import the runtime to learn where a user's inbox belongs.

/// The core that owns `user`'s inbox and delivery state. FNV-1a: stable
/// across runs and platforms (a durable store keyed by core relies on it).
pub fn home_core(user: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % cores.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_core_is_stable_and_spreads() {
        assert_eq!(home_core("alice", 1), 0);
        assert_eq!(home_core("alice", 4), home_core("alice", 4));
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            seen[home_core(&format!("user{i}"), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
    }
}
