//! Integration tests of the catalog, in one test binary so that it links once: the public API
//! (`api`), what opening refuses (`refusals`), a model-based test (`model`) and a kill -9 crash
//! test (`crash`), plus the helpers they share.

mod api;
mod crash;
mod model;
mod refusals;

use serde::{Deserialize, Serialize};

/// A stand-in for the metadata state: its bytes are derived from its index, so a reader can
/// tell a consistent state from a torn or mixed one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub index: u64,
    pub bytes: Vec<u8>,
}

impl Payload {
    pub fn for_index(index: u64) -> Payload {
        let length = (index % 97) as usize + 8;
        let bytes = (0..length)
            .map(|offset| (index.wrapping_mul(31).wrapping_add(offset as u64) % 251) as u8)
            .collect();
        Payload { index, bytes }
    }

    pub fn is_consistent(&self) -> bool {
        *self == Payload::for_index(self.index)
    }
}

/// A small seeded generator (splitmix64), so that the tests need no extra dependency and a
/// seed printed on failure replays the same run.
#[derive(Debug)]
pub struct SeededRandom(u64);

impl SeededRandom {
    pub fn new(seed: u64) -> SeededRandom {
        SeededRandom(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// The seed for a seeded test: `NODEDB_TEST_SEED` if set, else `default`.
pub fn test_seed(default: u64) -> u64 {
    std::env::var("NODEDB_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(default)
}
