//! The fuzzing loop: a corpus seeded with valid encodings, mutated until the time is up, with
//! every input that shows a new outcome class kept for further mutation. A panic, a broken
//! property or an input that runs longer than the hang limit stops the target; the input is
//! printed in hex and saved under the failure directory.

use crate::mutate::mutate;
use crate::{Target, hex};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most inputs kept in a target's corpus; past it a new input replaces a random non-seed one.
pub const CORPUS_ENTRIES_MAX: usize = 4096;
/// One input running longer than this is a hang.
pub const HANG_MS_DEFAULT: u64 = 2_000;

/// How long and from where one target is fuzzed.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub duration: Duration,
    pub seed: u64,
    /// Failing inputs are saved as `<failure_dir>/<target>/<kind>-<hash>.bin`.
    pub failure_dir: PathBuf,
    pub hang_ms: u64,
}

/// What a failing input did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    Panic,
    Violation,
}

/// The first failure of a run.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
    pub input: Vec<u8>,
    pub saved_to: Option<PathBuf>,
}

/// The result of fuzzing one target.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub target: &'static str,
    pub executions: u64,
    pub corpus_entries: usize,
    pub outcome_classes: usize,
    pub elapsed: Duration,
    pub failure: Option<Failure>,
}

/// Fuzzes `target` until `config.duration` has passed or an input fails.
pub fn run(target: &mut dyn Target, config: &RunConfig) -> RunReport {
    let started = Instant::now();
    let name = target.name();
    let bytes_max = target.input_bytes_max();
    let watchdog = Watchdog::start(name, config);
    let _quiet = QuietPanics::install();
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let mut classes: HashSet<u64> = HashSet::new();
    let mut executions = 0u64;
    let seeds = target.seeds();
    let seed_count = seeds.len();
    let mut failure = None;

    // The seeds are valid encodings: they must pass before anything is mutated.
    for input in seeds {
        executions += 1;
        match execute(target, &watchdog, &input) {
            Ok(class) => {
                classes.insert(class);
                corpus.push(input);
            }
            Err(found) => {
                failure = Some(found);
                break;
            }
        }
    }
    if corpus.is_empty() && failure.is_none() {
        corpus.push(Vec::new());
    }
    while failure.is_none() && started.elapsed() < config.duration {
        // Check the clock once per batch: it costs more than a small decode.
        for _ in 0..64 {
            let parent = &corpus[rng.random_range(0..corpus.len())];
            let other = &corpus[rng.random_range(0..corpus.len())];
            let input = mutate(&mut rng, parent, other, bytes_max);
            executions += 1;
            match execute(target, &watchdog, &input) {
                Ok(class) => {
                    if classes.insert(class) {
                        keep(&mut rng, &mut corpus, seed_count, input);
                    }
                }
                Err(found) => {
                    failure = Some(found);
                    break;
                }
            }
        }
    }
    watchdog.stop();
    if let Some(found) = &mut failure {
        found.saved_to = save_failure(&config.failure_dir, name, found);
    }
    RunReport {
        target: name,
        executions,
        corpus_entries: corpus.len(),
        outcome_classes: classes.len(),
        elapsed: started.elapsed(),
        failure,
    }
}

/// Runs `target` on one input (a saved failure, a regression) and says what it did.
pub fn replay(target: &mut dyn Target, input: &[u8]) -> Result<(), Failure> {
    let _quiet = QuietPanics::install();
    run_guarded(target, input).map(|_| ())
}

fn execute(target: &mut dyn Target, watchdog: &Watchdog, input: &[u8]) -> Result<u64, Failure> {
    watchdog.begin(input);
    let result = run_guarded(target, input);
    watchdog.end();
    result
}

fn run_guarded(target: &mut dyn Target, input: &[u8]) -> Result<u64, Failure> {
    let failure = |kind, message| Failure {
        kind,
        message,
        input: input.to_vec(),
        saved_to: None,
    };
    match panic::catch_unwind(AssertUnwindSafe(|| target.check(input))) {
        Ok(Ok(class)) => Ok(class),
        Ok(Err(violation)) => Err(failure(FailureKind::Violation, violation)),
        Err(payload) => {
            let message = LAST_PANIC
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take()
                .unwrap_or_else(|| panic_text(payload.as_ref()));
            Err(failure(FailureKind::Panic, message))
        }
    }
}

fn keep(rng: &mut SmallRng, corpus: &mut Vec<Vec<u8>>, seed_count: usize, input: Vec<u8>) {
    if corpus.len() < CORPUS_ENTRIES_MAX {
        corpus.push(input);
    } else if seed_count < corpus.len() {
        let slot = rng.random_range(seed_count..corpus.len());
        corpus[slot] = input;
    }
}

fn save_failure(dir: &Path, target: &str, failure: &Failure) -> Option<PathBuf> {
    let kind = match failure.kind {
        FailureKind::Panic => "panic",
        FailureKind::Violation => "violation",
    };
    let dir = dir.join(target);
    let path = dir.join(format!(
        "{kind}-{:016x}.bin",
        crate::outcome(&hex(&failure.input))
    ));
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(&path, &failure.input).ok()?;
    Some(path)
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// The message and place of the last panic, recorded by the quiet hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// While alive, panics are recorded instead of printed: the fuzzer reports them itself.
struct QuietPanics {
    previous: Option<PanicHook>,
}

/// A panic hook as `std::panic::take_hook` returns it.
type PanicHook = Box<dyn Fn(&panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl QuietPanics {
    fn install() -> QuietPanics {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|location| format!(" at {}:{}", location.file(), location.line()))
                .unwrap_or_default();
            let message = panic_text(info.payload());
            *LAST_PANIC
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                Some(format!("{message}{location}"));
        }));
        QuietPanics {
            previous: Some(previous),
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            panic::set_hook(previous);
        }
    }
}

/// Watches the running input from another thread: one that runs past the hang limit cannot
/// be interrupted, so the watchdog reports it, saves it and ends the process.
struct Watchdog {
    shared: Arc<WatchState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct WatchState {
    epoch: Instant,
    /// Milliseconds since `epoch` + 1 when the current input started; 0 when idle.
    started_ms: AtomicU64,
    input: Mutex<Vec<u8>>,
    stop: AtomicBool,
}

impl Watchdog {
    fn start(target: &'static str, config: &RunConfig) -> Watchdog {
        let shared = Arc::new(WatchState {
            epoch: Instant::now(),
            started_ms: AtomicU64::new(0),
            input: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let watched = Arc::clone(&shared);
        let hang_ms = config.hang_ms;
        let failure_dir = config.failure_dir.clone();
        let thread = std::thread::spawn(move || {
            while !watched.stop.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(50));
                let started = watched.started_ms.load(Ordering::Acquire);
                let now = watched.epoch.elapsed().as_millis() as u64 + 1;
                if started != 0 && now.saturating_sub(started) > hang_ms {
                    let input = watched
                        .input
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clone();
                    let failure = Failure {
                        kind: FailureKind::Violation,
                        message: format!("one input ran for more than {hang_ms} ms (hang)"),
                        input,
                        saved_to: None,
                    };
                    let saved = save_failure(&failure_dir, target, &failure);
                    eprintln!(
                        "fuzz {target}: HANG: {}\n  input ({} bytes): {}\n  saved to: {}",
                        failure.message,
                        failure.input.len(),
                        hex(&failure.input),
                        saved
                            .map(|path| path.display().to_string())
                            .unwrap_or_default()
                    );
                    std::process::exit(2);
                }
            }
        });
        Watchdog {
            shared,
            thread: Some(thread),
        }
    }

    fn begin(&self, input: &[u8]) {
        {
            let mut current = self
                .shared
                .input
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            current.clear();
            current.extend_from_slice(input);
        }
        let now = self.shared.epoch.elapsed().as_millis() as u64 + 1;
        self.shared.started_ms.store(now, Ordering::Release);
    }

    fn end(&self) {
        self.shared.started_ms.store(0, Ordering::Release);
    }

    fn stop(mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Verdict, outcome};

    /// Refuses inputs that contain the byte 0x42 after a 0x41, panics on three 0xEE.
    struct Planted;

    impl Target for Planted {
        fn name(&self) -> &'static str {
            "planted"
        }
        fn seeds(&self) -> Vec<Vec<u8>> {
            vec![vec![0x41, 0x00, 0xEE, 0xEE, 0x00]]
        }
        fn input_bytes_max(&self) -> usize {
            16
        }
        fn check(&mut self, input: &[u8]) -> Verdict {
            if input.windows(3).any(|window| window == [0xEE, 0xEE, 0xEE]) {
                panic!("three 0xEE");
            }
            if input.windows(2).any(|window| window == [0x41, 0x42]) {
                return Err("0x41 then 0x42".into());
            }
            Ok(outcome(&format!("len {}", input.len().min(4))))
        }
    }

    fn config(dir: &Path, seed: u64) -> RunConfig {
        RunConfig {
            duration: Duration::from_secs(20),
            seed,
            failure_dir: dir.to_path_buf(),
            hang_ms: HANG_MS_DEFAULT,
        }
    }

    #[test]
    fn a_planted_bug_is_found_reported_and_saved() {
        let dir = std::env::temp_dir().join(format!("nodedb-fuzz-engine-{}", std::process::id()));
        let seed = 11;
        println!("seed {seed}");
        let report = run(&mut Planted, &config(&dir, seed));
        let failure = report
            .failure
            .expect("the planted bug is found within the time limit");
        let saved = failure.saved_to.clone().expect("saved");
        assert_eq!(std::fs::read(&saved).unwrap(), failure.input);
        match failure.kind {
            FailureKind::Panic => assert!(failure.message.contains("three 0xEE"), "{failure:?}"),
            FailureKind::Violation => assert_eq!(failure.message, "0x41 then 0x42"),
        }
        let replayed = replay(&mut Planted, &failure.input).unwrap_err();
        assert_eq!(replayed.kind, failure.kind);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_clean_target_runs_until_the_time_is_up() {
        struct Clean;
        impl Target for Clean {
            fn name(&self) -> &'static str {
                "clean"
            }
            fn seeds(&self) -> Vec<Vec<u8>> {
                vec![vec![1, 2, 3]]
            }
            fn check(&mut self, input: &[u8]) -> Verdict {
                Ok(outcome(&input.len().min(8).to_string()))
            }
        }
        let dir = std::env::temp_dir();
        let mut config = config(&dir, 3);
        config.duration = Duration::from_millis(200);
        let report = run(&mut Clean, &config);
        assert!(report.failure.is_none());
        assert!(report.executions > 100, "{report:?}");
        assert!(
            report.outcome_classes > 1 && report.corpus_entries > 1,
            "{report:?}"
        );
    }
}
