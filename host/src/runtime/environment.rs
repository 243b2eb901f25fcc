//! The clocks and random numbers a guest reads through WASI, and whether the current message
//! read them.
//!
//! A deterministic function (`--deterministic`) reads values that depend on the message alone:
//! its wall clock is the message's publish time, its monotonic clock starts at zero for each
//! message and moves a microsecond per read, and its random numbers come from a generator seeded
//! by the function's name and the message's topic and id. So a replay of the message reads what
//! the first run read. Any other function reads the host's clocks and random numbers, and the
//! host notes whether a message read them, so that a replay can say which results may differ.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand_core::{Rng, TryRng};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};

use super::GuestMessage;

/// What a message read that a replay cannot read again the same way, unless the function is
/// deterministic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestReads {
    /// It read the wall clock or the monotonic clock.
    pub clock: bool,
    /// It read random numbers.
    pub random: bool,
}

const READ_CLOCK: u8 = 1;
const READ_RANDOM: u8 = 2;

/// One instance's clocks and random numbers, shared by the WASI context that the guest reads
/// through and the store that moves them from message to message.
#[derive(Clone)]
pub(super) struct Environment {
    /// Set only for a deterministic function: what its current message reads.
    deterministic: Option<Arc<Mutex<MessageSource>>>,
    /// What the current message read (`READ_CLOCK`, `READ_RANDOM`).
    reads: Arc<AtomicU8>,
}

/// A deterministic function's clocks and random numbers for its current message.
struct MessageSource {
    /// The function's fully qualified name, part of every message's seed.
    function_id: String,
    /// The publish time and seed of each message of the batch.
    batch: Vec<(u64, u64)>,
    publish_time_ms: u64,
    monotonic_ns: u64,
    random: SplitMix64,
}

impl Environment {
    /// The environment of an instance of `function_id`, deterministic or not.
    pub(super) fn new(deterministic: bool, function_id: &str) -> Self {
        let source = MessageSource {
            function_id: function_id.to_owned(),
            batch: Vec::new(),
            publish_time_ms: 0,
            monotonic_ns: 0,
            random: SplitMix64(fnv1a(function_id.as_bytes())),
        };
        Self { deterministic: deterministic.then(|| Arc::new(Mutex::new(source))), reads: Arc::default() }
    }

    /// Gives the WASI context this environment's clocks and random numbers.
    pub(super) fn install(&self, builder: &mut WasiCtxBuilder) {
        builder
            .wall_clock(TrackedWallClock { environment: self.clone(), host: wasmtime_wasi::clocks::wall_clock() })
            .monotonic_clock(TrackedMonotonicClock {
                environment: self.clone(),
                host: wasmtime_wasi::clocks::monotonic_clock(),
            })
            .secure_random(TrackedRandom { environment: self.clone(), host: wasmtime_wasi::random::thread_rng() })
            .insecure_random(TrackedRandom { environment: self.clone(), host: wasmtime_wasi::random::thread_rng() });
        if let Some(source) = &self.deterministic {
            let seed = fnv1a(lock(source).function_id.as_bytes());
            builder.insecure_random_seed(u128::from(seed));
        }
    }

    /// Starts a batch of `messages` at its first.
    pub(super) fn begin_batch(&self, messages: &[GuestMessage]) {
        if let Some(source) = &self.deterministic {
            let mut source = lock(source);
            let function_id = source.function_id.clone();
            source.batch = messages
                .iter()
                .map(|message| {
                    let seed =
                        [function_id.as_bytes(), message.topic.as_bytes(), message.message_id.as_bytes()].join(&0u8);
                    (message.publish_time, fnv1a(&seed))
                })
                .collect();
        }
        self.begin_message(0);
    }

    /// Starts message `index` of the batch: nothing read yet, and a deterministic function's
    /// clocks and random numbers set for it.
    pub(super) fn begin_message(&self, index: usize) {
        self.reads.store(0, Ordering::Relaxed);
        if let Some(source) = &self.deterministic {
            let mut source = lock(source);
            let (publish_time_ms, seed) = source.batch.get(index).copied().unwrap_or_default();
            source.publish_time_ms = publish_time_ms;
            source.monotonic_ns = 0;
            source.random = SplitMix64(seed);
        }
    }

    /// What the current message read so far.
    pub(super) fn reads(&self) -> GuestReads {
        let reads = self.reads.load(Ordering::Relaxed);
        GuestReads { clock: reads & READ_CLOCK != 0, random: reads & READ_RANDOM != 0 }
    }

    fn read(&self, what: u8) {
        self.reads.fetch_or(what, Ordering::Relaxed);
    }
}

fn lock(source: &Mutex<MessageSource>) -> std::sync::MutexGuard<'_, MessageSource> {
    // Every update of the source is a plain assignment: a panic cannot leave it half made.
    source.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// FNV-1a, stable across processes and versions, so that a seed is the same in a replay.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64: small, fast and good enough for a function's random numbers; what matters here is
/// that one seed always gives the same numbers.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

struct TrackedWallClock {
    environment: Environment,
    host: Box<dyn HostWallClock + Send>,
}

impl HostWallClock for TrackedWallClock {
    fn resolution(&self) -> Duration {
        match &self.environment.deterministic {
            Some(_) => Duration::from_millis(1),
            None => self.host.resolution(),
        }
    }

    fn now(&self) -> Duration {
        self.environment.read(READ_CLOCK);
        match &self.environment.deterministic {
            Some(source) => Duration::from_millis(lock(source).publish_time_ms),
            None => self.host.now(),
        }
    }
}

struct TrackedMonotonicClock {
    environment: Environment,
    host: Box<dyn HostMonotonicClock + Send>,
}

/// How far a deterministic monotonic clock moves at each read, in nanoseconds.
const MONOTONIC_STEP_NS: u64 = 1_000;

impl HostMonotonicClock for TrackedMonotonicClock {
    fn resolution(&self) -> u64 {
        match &self.environment.deterministic {
            Some(_) => MONOTONIC_STEP_NS,
            None => self.host.resolution(),
        }
    }

    fn now(&self) -> u64 {
        self.environment.read(READ_CLOCK);
        match &self.environment.deterministic {
            Some(source) => {
                let mut source = lock(source);
                let now = source.monotonic_ns;
                source.monotonic_ns += MONOTONIC_STEP_NS;
                now
            }
            None => self.host.now(),
        }
    }
}

struct TrackedRandom {
    environment: Environment,
    host: Box<dyn Rng + Send>,
}

impl TryRng for TrackedRandom {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.try_next_u64().map(|value| value as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.environment.read(READ_RANDOM);
        Ok(match &self.environment.deterministic {
            Some(source) => lock(source).random.next(),
            None => self.host.next_u64(),
        })
    }

    fn try_fill_bytes(&mut self, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.environment.read(READ_RANDOM);
        match &self.environment.deterministic {
            Some(source) => {
                let mut source = lock(source);
                for chunk in bytes.chunks_mut(8) {
                    chunk.copy_from_slice(&source.random.next().to_le_bytes()[..chunk.len()]);
                }
            }
            None => self.host.fill_bytes(bytes),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, publish_time: u64) -> GuestMessage {
        GuestMessage {
            value: Vec::new(),
            key: None,
            properties: Vec::new(),
            event_time: None,
            publish_time,
            message_id: id.into(),
            topic: "persistent://public/default/in".into(),
            partition_key: None,
        }
    }

    /// What a guest reading its clocks and random numbers would see during `message`.
    fn readings(environment: &Environment, message: &GuestMessage) -> (Duration, u64, u64, u64) {
        environment.begin_batch(std::slice::from_ref(message));
        let wall = TrackedWallClock { environment: environment.clone(), host: wasmtime_wasi::clocks::wall_clock() };
        let monotonic =
            TrackedMonotonicClock { environment: environment.clone(), host: wasmtime_wasi::clocks::monotonic_clock() };
        let mut random = TrackedRandom { environment: environment.clone(), host: wasmtime_wasi::random::thread_rng() };
        (wall.now(), monotonic.now(), monotonic.now(), random.next_u64())
    }

    #[test]
    fn a_deterministic_environment_gives_each_message_the_same_values_every_time() {
        let first = Environment::new(true, "public/default/f");
        let again = Environment::new(true, "public/default/f");
        let one = message("1", 1_700_000_000_000);
        let two = message("2", 1_700_000_000_500);
        let read_one = readings(&first, &one);
        assert_eq!(read_one.0, Duration::from_millis(1_700_000_000_000), "the wall clock is the publish time");
        assert_eq!((read_one.1, read_one.2), (0, MONOTONIC_STEP_NS), "the monotonic clock starts at zero");
        assert_eq!(first.reads(), GuestReads { clock: true, random: true });
        let read_two = readings(&first, &two);
        assert_ne!(read_one.3, read_two.3, "each message has its own random numbers");
        assert_eq!(readings(&again, &one), read_one, "another instance reads the same for the same message");
        assert_eq!(readings(&again, &two), read_two);
        let other = Environment::new(true, "public/default/g");
        assert_ne!(readings(&other, &one).3, read_one.3, "another function has other numbers");
    }

    #[test]
    fn any_environment_notes_what_the_current_message_read() {
        let environment = Environment::new(false, "public/default/f");
        environment.begin_batch(&[message("1", 5), message("2", 5)]);
        assert_eq!(environment.reads(), GuestReads::default());
        let wall = TrackedWallClock { environment: environment.clone(), host: wasmtime_wasi::clocks::wall_clock() };
        assert!(wall.now() > Duration::from_secs(1_000_000_000), "the host's clock, not the publish time");
        assert_eq!(environment.reads(), GuestReads { clock: true, random: false });
        environment.begin_message(1);
        assert_eq!(environment.reads(), GuestReads::default(), "each message starts unread");
    }
}
