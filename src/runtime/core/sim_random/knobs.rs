//! The simulation's seeded generator and the knobs a seed picks (cores,
//! store, window, high-water mark, mailbox capacity, frame size, timeouts):
//! what makes a run a seed to replay. Apart from the world they configure.

use super::*;

/// A small, fast, seedable generator (splitmix64): the simulation must not
/// depend on a crate's stream staying the same across versions.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// What a seed sets up: small limits, so every bound is reached often.
#[derive(Clone, Debug)]
pub struct Knobs {
    pub cores: usize,
    pub store: StoreKind,
    pub users: usize,
    pub devices_per_user: usize,
    pub inflight_window: u32,
    pub output_high_water_bytes: u64,
    pub mailbox_capacity: u32,
    pub max_frame: u32,
    pub max_payload_bytes: u32,
    pub ack_timeout_ms: u64,
    pub max_retries: u32,
    pub slow_consumer_timeout_ms: u64,
    pub send_rate_per_connection: u32,
    pub max_sends_in_flight: u32,
}

impl Knobs {
    pub fn random(rng: &mut Rng) -> Knobs {
        let max_frame = rng.pick(&[256u32, 512, 1024, 4096]);
        Knobs {
            cores: 1 + rng.below(4) as usize,
            store: if rng.chance(500) { StoreKind::Memory } else { StoreKind::Durable },
            users: 2 + rng.below(7) as usize,
            devices_per_user: 1 + rng.below(3) as usize,
            inflight_window: rng.pick(&[1u32, 2, 4, 8, 64]),
            output_high_water_bytes: rng.pick(&[512u64, 2048, 8192, 65536]),
            mailbox_capacity: rng.pick(&[1u32, 2, 8, 64, 65536]),
            max_frame,
            // Sometimes the whole frame (then the user name's length decides
            // whether the PUSH fits: SENDACK 4 near the limit).
            max_payload_bytes: rng.pick(&[64u32, max_frame / 2, max_frame]),
            ack_timeout_ms: rng.pick(&[100u64, 500, 5000]),
            max_retries: rng.pick(&[0u32, 1, 2]),
            slow_consumer_timeout_ms: rng.pick(&[200u64, 2000, 30_000]),
            send_rate_per_connection: rng.pick(&[5u32, 100, 100_000]),
            max_sends_in_flight: rng.pick(&[1u32, 4, 1024]),
        }
    }

    pub fn config(&self) -> Config {
        let mut cfg = Config::default();
        cfg.session.inflight_window = self.inflight_window;
        cfg.session.max_frame = self.max_frame;
        cfg.session.ack_timeout_ms = self.ack_timeout_ms;
        cfg.session.max_retries = self.max_retries;
        cfg.limits.output_high_water_bytes = self.output_high_water_bytes;
        cfg.limits.mailbox_capacity = self.mailbox_capacity;
        cfg.limits.max_payload_bytes = self.max_payload_bytes;
        cfg.limits.slow_consumer_timeout_ms = self.slow_consumer_timeout_ms;
        cfg.limits.send_rate_per_connection = self.send_rate_per_connection;
        cfg.limits.max_sends_in_flight = self.max_sends_in_flight;
        // Every simulated client comes from 127.0.0.1 and reconnects often:
        // the per-address admission is not what is under test here.
        cfg.limits.connect_rate_per_ip = 1_000_000;
        cfg.limits.max_preauth_per_ip = 1_000_000;
        cfg.limits.connect_rate = 1_000_000;
        // Nothing may be trimmed: every confirmed message must be delivered.
        cfg.store.inbox_max_messages = 1 << 40;
        cfg
    }
}
