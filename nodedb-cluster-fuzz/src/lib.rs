//! A mutation fuzzer for every decoder that reads bytes it did not write: transport frames,
//! Raft RPCs and log records, KV and metadata commands, catalog records and the admin API's
//! request bodies. It runs on the stable toolchain (no libFuzzer, no sanitizer coverage): each
//! target starts from valid encodings, mutates them (bit flips, interesting integers, overlong
//! varints, inserts, deletes, truncation, splices) and keeps every input that produced an
//! outcome class it had not seen before, a coarse stand-in for coverage feedback.
//!
//! Every target checks that nothing panics or hangs, that valid values survive
//! `decode(encode(x)) == x`, and that whatever decodes re-encodes to exactly the bytes it came
//! from (one encoding per value), or is refused. Run it with `cargo xtask fuzz`.

pub mod engine;
pub mod mutate;
pub mod targets;

/// What one execution observed when no property broke: a label of the outcome's class (which
/// decoder accepted or refused, and why), used as feedback. Numbers that vary freely, such as
/// lengths, stay out of it so that the classes stay few.
pub type Outcome = u64;

/// Whether an input produced a property violation, and which.
pub type Verdict = Result<Outcome, String>;

/// A decoder under test.
pub trait Target {
    /// Stable name, used on the command line and for the failure directory.
    fn name(&self) -> &'static str;
    /// Valid encodings the mutations start from.
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Largest input the mutator builds for this target.
    fn input_bytes_max(&self) -> usize {
        4096
    }
    /// Runs the decoder(s) on `input` and checks their properties. A panic inside is a
    /// failure too; the engine catches it.
    fn check(&mut self, input: &[u8]) -> Verdict;
}

/// The outcome label for `class`.
pub fn outcome(class: &str) -> Outcome {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    class.hash(&mut hasher);
    hasher.finish()
}

/// Combines two outcome labels (the results of two decoders run on one input).
pub fn combine(first: Outcome, second: Outcome) -> Outcome {
    first.rotate_left(17) ^ second
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Bytes from lower-case or upper-case hex; `None` when `text` is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}
