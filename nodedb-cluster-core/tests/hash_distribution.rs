//! Distribution of `vshard_for_key` over 200 000 keys, random (fixed seed) and sequential:
//! a chi-squared bound and a per-vShard deviation bound, both far enough out (about 6 sigma)
//! that a correct hash never trips them, and close enough that a biased reduction would.

use nodedb_cluster_core::{VSHARD_COUNT, vshard_for_key};

const KEYS: usize = 200_000;

/// Deterministic key bytes: splitmix64 with a fixed seed (no unseeded randomness).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Counts per vShard over `keys`.
fn histogram(keys: impl Iterator<Item = Vec<u8>>) -> Vec<u64> {
    let mut counts = vec![0u64; usize::from(VSHARD_COUNT)];
    for key in keys {
        counts[vshard_for_key(&key).index()] += 1;
    }
    counts
}

/// Chi-squared against the uniform distribution, and the largest |count - expected|.
fn check_uniform(counts: &[u64], what: &str) {
    let total: u64 = counts.iter().sum();
    let expected = total as f64 / counts.len() as f64;
    let chi_squared: f64 = counts
        .iter()
        .map(|count| (*count as f64 - expected).powi(2) / expected)
        .sum();
    let degrees = (counts.len() - 1) as f64;
    // Chi-squared with k degrees of freedom has mean k and standard deviation sqrt(2k).
    let spread = 6.0 * (2.0 * degrees).sqrt();
    assert!(
        (degrees - spread..degrees + spread).contains(&chi_squared),
        "{what}: chi-squared {chi_squared:.1} outside {degrees} +- {spread:.1}"
    );
    let bin_sigma = (expected * (1.0 - 1.0 / counts.len() as f64)).sqrt();
    let deviation_max = counts
        .iter()
        .map(|count| (*count as f64 - expected).abs())
        .fold(0.0, f64::max);
    println!(
        "{what}: chi-squared {chi_squared:.1} (df {degrees}), max deviation {deviation_max:.0} of {expected:.1}"
    );
    assert!(
        deviation_max < 6.5 * bin_sigma,
        "{what}: a vShard is {deviation_max:.0} keys off the expected {expected:.1}"
    );
}

#[test]
fn random_keys_spread_evenly() {
    let mut random = SplitMix64(0x5EED_0004);
    let keys = (0..KEYS).map(|_| {
        // At least 8 bytes, so that duplicate keys (which are not independent samples) are
        // negligible; short keys are covered by the sequential test.
        let length = 8 + (random.next() % 33) as usize;
        (0..length).map(|_| random.next() as u8).collect()
    });
    check_uniform(&histogram(keys), "random keys");
}

#[test]
fn sequential_keys_spread_evenly() {
    let keys = (0..KEYS).map(|index| format!("user:{index}").into_bytes());
    check_uniform(&histogram(keys), "sequential keys");
}

#[test]
fn eight_groups_get_equal_shares() {
    let keys = (0..KEYS).map(|index| (index as u64).to_le_bytes().to_vec());
    let counts = histogram(keys);
    // Round-robin initial placement: group g owns vShards with v mod 8 == g - 1.
    let mut per_group = [0u64; 8];
    for (vshard, count) in counts.iter().enumerate() {
        per_group[vshard % 8] += count;
    }
    let expected = KEYS as f64 / 8.0;
    for (group, count) in per_group.iter().enumerate() {
        let off = (*count as f64 - expected).abs() / expected;
        assert!(
            off < 0.03,
            "group {} gets {count} keys, {off:.3} off",
            group + 1
        );
    }
}
