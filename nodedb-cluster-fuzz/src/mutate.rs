//! The mutations: small structural edits of a valid encoding, biased toward what breaks
//! decoders (lengths and counts set to extremes, varints made overlong, bytes cut or repeated).

use rand::Rng;
use rand::rngs::SmallRng;

/// Most edits applied to one input before it is tried.
pub const EDITS_PER_INPUT_MAX: u32 = 6;

const INTERESTING_BYTES: &[u8] = &[0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xfe, 0xff];
const INTERESTING_WORDS: &[u64] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// Returns a mutated copy of `input`, at most `bytes_max` long. `other` is another corpus
/// entry for splicing.
pub fn mutate(rng: &mut SmallRng, input: &[u8], other: &[u8], bytes_max: usize) -> Vec<u8> {
    let mut bytes = input.to_vec();
    if rng.random_ratio(1, 64) {
        let length = rng.random_range(0..=bytes_max.min(64));
        return (0..length).map(|_| rng.random()).collect();
    }
    let edits = rng.random_range(1..=EDITS_PER_INPUT_MAX);
    for _ in 0..edits {
        edit(rng, &mut bytes, other);
    }
    bytes.truncate(bytes_max);
    bytes
}

fn edit(rng: &mut SmallRng, bytes: &mut Vec<u8>, other: &[u8]) {
    if bytes.is_empty() {
        let length = rng.random_range(1..=8);
        bytes.extend((0..length).map(|_| rng.random::<u8>()));
        return;
    }
    let at = rng.random_range(0..bytes.len());
    match rng.random_range(0..12) {
        0 => bytes[at] ^= 1 << rng.random_range(0..8),
        1 => bytes[at] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())],
        2 => bytes[at] = rng.random(),
        3 => bytes[at] = bytes[at].wrapping_add(rng.random_range(1..=4)),
        4 => bytes[at] = bytes[at].wrapping_sub(rng.random_range(1..=4)),
        5 => overwrite_word(rng, bytes, at),
        6 => {
            let count = rng.random_range(1..=8);
            let inserted: Vec<u8> = (0..count).map(|_| rng.random()).collect();
            bytes.splice(at..at, inserted);
        }
        7 => {
            let end = (at + rng.random_range(1..=16)).min(bytes.len());
            bytes.drain(at..end);
        }
        8 => bytes.truncate(at),
        9 => {
            // Repeat a slice: grows lists and strings without touching their length prefix.
            let end = (at + rng.random_range(1..=32)).min(bytes.len());
            let slice = bytes[at..end].to_vec();
            let to = rng.random_range(0..=bytes.len());
            bytes.splice(to..to, slice);
        }
        10 => {
            // An overlong varint: the same number with one more continuation byte.
            if bytes[at] < 0x80 {
                let value = bytes[at];
                bytes.splice(at..=at, [value | 0x80, 0x00]);
            } else {
                bytes.insert(at, 0x80);
            }
        }
        _ => splice(rng, bytes, other),
    }
}

fn overwrite_word(rng: &mut SmallRng, bytes: &mut [u8], at: usize) {
    let word = INTERESTING_WORDS[rng.random_range(0..INTERESTING_WORDS.len())];
    let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
    let big_endian = rng.random_ratio(1, 4);
    let encoded = if big_endian {
        word.to_be_bytes()[8 - width..].to_vec()
    } else {
        word.to_le_bytes()[..width].to_vec()
    };
    for (offset, byte) in encoded.into_iter().enumerate() {
        if let Some(slot) = bytes.get_mut(at + offset) {
            *slot = byte;
        }
    }
}

fn splice(rng: &mut SmallRng, bytes: &mut Vec<u8>, other: &[u8]) {
    if other.is_empty() {
        return;
    }
    let keep = rng.random_range(0..=bytes.len());
    let from = rng.random_range(0..other.len());
    bytes.truncate(keep);
    bytes.extend_from_slice(&other[from..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mutations_stay_within_the_bound_and_change_the_input() {
        let mut rng = SmallRng::seed_from_u64(7);
        let input: Vec<u8> = (0..40).collect();
        let mut changed = 0;
        for _ in 0..2_000 {
            let mutated = mutate(&mut rng, &input, b"other input", 48);
            assert!(mutated.len() <= 48);
            if mutated != input {
                changed += 1;
            }
        }
        assert!(
            changed > 1_900,
            "only {changed} of 2000 mutations changed the input"
        );
    }

    #[test]
    fn empty_inputs_grow() {
        let mut rng = SmallRng::seed_from_u64(1);
        let grown = (0..100).filter(|_| !mutate(&mut rng, &[], &[], 64).is_empty());
        assert!(grown.count() > 50);
    }
}
