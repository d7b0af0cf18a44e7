//! The node processes the launcher started, held so that none outlives the driver: the
//! guard kills every child when dropped (normal end, error, panic), and a Ctrl-C / SIGTERM
//! handler kills them through the same shared table before the driver exits.

use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Bytes read from the end of a log file to find its last lines.
const LOG_TAIL_BYTES_MAX: u64 = 64 * 1024;

/// Running children by node id. Cloning shares the table.
#[derive(Clone, Debug, Default)]
pub struct Processes {
    children: Arc<Mutex<BTreeMap<u64, Child>>>,
}

/// Kills every child of `processes` when dropped.
#[derive(Debug)]
pub struct ProcessGuard {
    processes: Processes,
}

/// What became of a child that was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildState {
    Running,
    Exited(ExitStatus),
    NotStarted,
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    /// A guard that kills every child of this table when dropped.
    pub fn guard(&self) -> ProcessGuard {
        ProcessGuard {
            processes: self.clone(),
        }
    }

    /// Kills every child on Ctrl-C or SIGTERM, then exits with status 130. Call once.
    pub fn kill_on_interrupt(&self, work_dir: &Path) -> Result<()> {
        self.kill_on_interrupt_then(work_dir, || {})
    }

    /// [`Processes::kill_on_interrupt`], running `clean_up` after the kills (e.g. to remove
    /// what the driver set up around the nodes). Call once.
    pub fn kill_on_interrupt_then(
        &self,
        work_dir: &Path,
        clean_up: impl Fn() + Send + 'static,
    ) -> Result<()> {
        let processes = self.clone();
        let work_dir = work_dir.to_path_buf();
        ctrlc::set_handler(move || {
            let killed = processes.kill_all();
            clean_up();
            eprintln!(
                "\ninterrupted: killed {killed} node processes; work dir kept at {}",
                work_dir.display()
            );
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")
    }

    /// Starts `command` as node `node_id`, appending its stdout and stderr to `log_path`
    /// after a header line. A node id must not be running already.
    pub fn spawn(&self, node_id: u64, mut command: Command, log_path: &Path) -> Result<()> {
        let mut children = self.lock();
        if let Some(existing) = children.get_mut(&node_id)
            && existing.try_wait()?.is_none()
        {
            anyhow::bail!("node {node_id} is already running (pid {})", existing.id());
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        writeln!(log, "==== xtask: starting node {node_id}: {command:?}")?;
        let stderr = log.try_clone()?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = command
            .spawn()
            .with_context(|| format!("starting node {node_id}: {command:?}"))?;
        children.insert(node_id, child);
        Ok(())
    }

    /// Sends SIGKILL to node `node_id` and reaps it. Returns false if it was not running.
    pub fn kill(&self, node_id: u64) -> bool {
        let child = self.lock().remove(&node_id);
        match child {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// Kills every child; returns how many there were.
    pub fn kill_all(&self) -> usize {
        let children = std::mem::take(&mut *self.lock());
        let count = children.len();
        for (_, mut child) in children {
            let _ = child.kill();
            let _ = child.wait();
        }
        count
    }

    /// The process id of node `node_id`, if it was started and not killed.
    pub fn pid(&self, node_id: u64) -> Option<u32> {
        self.lock().get(&node_id).map(Child::id)
    }

    /// Whether node `node_id` is still running.
    pub fn state(&self, node_id: u64) -> ChildState {
        let mut children = self.lock();
        let Some(child) = children.get_mut(&node_id) else {
            return ChildState::NotStarted;
        };
        match child.try_wait() {
            Ok(None) => ChildState::Running,
            Ok(Some(status)) => ChildState::Exited(status),
            Err(_) => ChildState::Running,
        }
    }

    /// The ids of the children started and not killed.
    #[cfg(test)]
    pub fn started(&self) -> Vec<u64> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Child>> {
        // A panic while holding the lock leaves the table itself intact: keep using it, so
        // that the children are still killed.
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.processes.kill_all();
    }
}

/// The last `lines_max` lines of the file at `path`, or a note saying why there are none.
pub fn log_tail(path: &Path, lines_max: usize) -> String {
    match read_tail(path) {
        Ok(text) => last_lines(&text, lines_max),
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// The last `lines_max` lines of `text`.
pub fn last_lines(text: &str, lines_max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(lines_max);
    lines[start..].join("\n")
}

fn read_tail(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES_MAX)))?;
    let mut bytes = Vec::new();
    file.take(LOG_TAIL_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn sleeper() -> Command {
        let mut command = Command::new("sleep");
        command.arg("600");
        command
    }

    fn temp_log(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xtask-{name}-{}.log", std::process::id()))
    }

    fn wait_exited(processes: &Processes, node_id: u64) -> ChildState {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let state = processes.state(node_id);
            if state != ChildState::Running || Instant::now() > deadline {
                return state;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_guard_kills_children_when_dropped() {
        let log = temp_log("guard");
        let processes = Processes::new();
        {
            let _guard = processes.guard();
            processes.spawn(1, sleeper(), &log).unwrap();
            processes.spawn(2, sleeper(), &log).unwrap();
            assert_eq!(processes.state(1), ChildState::Running);
            assert_eq!(processes.started(), [1, 2]);
        }
        assert!(processes.started().is_empty());
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn the_guard_kills_children_on_panic() {
        let log = temp_log("panic");
        let processes = Processes::new();
        let inner = processes.clone();
        let log_inner = log.clone();
        let result = std::thread::spawn(move || {
            let _guard = inner.guard();
            inner.spawn(1, sleeper(), &log_inner).unwrap();
            panic!("driver failed");
        })
        .join();
        assert!(result.is_err());
        assert!(processes.started().is_empty());
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn kill_stops_one_node_and_it_can_start_again() {
        let log = temp_log("kill");
        let processes = Processes::new();
        let _guard = processes.guard();
        processes.spawn(1, sleeper(), &log).unwrap();
        assert!(
            processes.spawn(1, sleeper(), &log).is_err(),
            "already running"
        );
        assert!(processes.kill(1));
        assert!(!processes.kill(1));
        assert_eq!(processes.state(1), ChildState::NotStarted);
        processes.spawn(1, sleeper(), &log).unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.matches("==== xtask: starting node 1").count(), 2);
        drop(_guard);
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn an_exited_child_is_reported_with_its_status() {
        let log = temp_log("exit");
        let processes = Processes::new();
        let _guard = processes.guard();
        let mut command = Command::new("sh");
        command.args(["-c", "echo bind failed: address in use; exit 3"]);
        processes.spawn(7, command, &log).unwrap();
        match wait_exited(&processes, 7) {
            ChildState::Exited(status) => assert_eq!(status.code(), Some(3)),
            other => panic!("expected an exit, got {other:?}"),
        }
        assert!(log_tail(&log, 1).contains("address in use"));
        std::fs::remove_file(log).unwrap();
    }

    #[test]
    fn tails_keep_the_last_lines() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
        assert!(log_tail(Path::new("/nonexistent/log"), 3).contains("cannot read"));
    }
}
