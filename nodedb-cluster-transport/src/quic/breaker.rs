//! Per-peer health: a circuit breaker (closed -> open after consecutive failures -> half-open
//! with one probe -> closed on success, or at once when the peer itself reaches us) and
//! reconnect backoff. Pure: time is passed in, so the decisions are tested without a clock or
//! a network.

use std::time::{Duration, Instant};

/// Consecutive failures that open the breaker.
pub const BREAKER_FAILURES_MAX: u32 = 5;
/// How long an open breaker fails calls fast before letting one probe through. Short: a peer
/// back from a restart must be reachable again within an election timeout or two, or the
/// survivors of the next failure cannot gather the votes they need from it.
pub const BREAKER_OPEN_MS: u64 = 1_000;
/// First reconnect delay after a failure; doubles per consecutive failure.
pub const RECONNECT_BACKOFF_MS_MIN: u64 = 50;
/// Largest reconnect delay.
pub const RECONNECT_BACKOFF_MS_MAX: u64 = 2_000;

/// Breaker and backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures_max: u32,
    pub open_ms: u64,
    pub backoff_ms_min: u64,
    pub backoff_ms_max: u64,
}

/// What an observer sees of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Whether a call may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Normal call.
    Pass,
    /// The one call allowed through a half-open breaker; its outcome decides the state.
    Probe,
    /// Fail fast.
    Reject,
}

/// Health of one peer.
#[derive(Debug, Clone)]
pub struct PeerHealth {
    config: BreakerConfig,
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_out: bool },
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            failures_max: BREAKER_FAILURES_MAX,
            open_ms: BREAKER_OPEN_MS,
            backoff_ms_min: RECONNECT_BACKOFF_MS_MIN,
            backoff_ms_max: RECONNECT_BACKOFF_MS_MAX,
        }
    }
}

impl PeerHealth {
    pub fn new(config: BreakerConfig) -> PeerHealth {
        PeerHealth {
            config,
            consecutive_failures: 0,
            last_failure: None,
            state: State::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Closed with no failure since the last success.
    pub fn is_healthy(&self) -> bool {
        self.state == State::Closed && self.consecutive_failures == 0
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Decides whether a call may start now.
    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            State::Closed => Admission::Pass,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probe_out: true };
                Admission::Probe
            }
            State::Open { .. } => Admission::Reject,
            State::HalfOpen { probe_out: false } => {
                self.state = State::HalfOpen { probe_out: true };
                Admission::Probe
            }
            State::HalfOpen { probe_out: true } => Admission::Reject,
        }
    }

    /// Whether a new connection attempt may start now (a probe always may).
    pub fn may_reconnect(&self, now: Instant, admission: Admission) -> bool {
        if admission == Admission::Probe {
            return true;
        }
        match self.last_failure {
            Some(at) if self.consecutive_failures > 0 => now >= at + self.backoff(),
            _ => true,
        }
    }

    /// How long a new connection attempt must still wait (zero when it may start now).
    pub fn reconnect_delay(&self, now: Instant, admission: Admission) -> Duration {
        if admission == Admission::Probe {
            return Duration::ZERO;
        }
        match self.last_failure {
            Some(at) if self.consecutive_failures > 0 => {
                (at + self.backoff()).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        }
    }

    /// The delay before the next reconnect, doubling per consecutive failure.
    pub fn backoff(&self) -> Duration {
        let doublings = self.consecutive_failures.saturating_sub(1).min(20);
        let delay = self
            .config
            .backoff_ms_min
            .saturating_mul(1u64 << doublings)
            .min(self.config.backoff_ms_max);
        Duration::from_millis(delay)
    }

    pub fn on_success(&mut self) {
        self.consecutive_failures = 0;
        self.last_failure = None;
        self.state = State::Closed;
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure = Some(now);
        let open = match self.state {
            State::HalfOpen { .. } => true,
            State::Closed => self.consecutive_failures >= self.config.failures_max,
            State::Open { .. } => false,
        };
        if open {
            self.state = State::Open {
                until: now + Duration::from_millis(self.config.open_ms),
            };
        }
    }

    /// A call that neither succeeded nor failed (timed out on a live connection, cancelled):
    /// a probe slot it held is given back.
    pub fn on_neutral(&mut self, admission: Admission) {
        if admission == Admission::Probe && self.state == (State::HalfOpen { probe_out: true }) {
            self.state = State::HalfOpen { probe_out: false };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failures_max: 3,
            open_ms: 1_000,
            backoff_ms_min: 10,
            backoff_ms_max: 40,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_then_half_opens_and_closes() {
        let start = Instant::now();
        let mut health = PeerHealth::new(config());
        for _ in 0..2 {
            assert_eq!(health.admit(start), Admission::Pass);
            health.on_failure(start);
        }
        assert_eq!(health.state(), BreakerState::Closed);
        assert_eq!(health.admit(start), Admission::Pass);
        health.on_failure(start);
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(
            health.admit(start + Duration::from_millis(999)),
            Admission::Reject
        );

        let later = start + Duration::from_millis(1_000);
        assert_eq!(health.admit(later), Admission::Probe);
        assert_eq!(health.state(), BreakerState::HalfOpen);
        assert_eq!(
            health.admit(later),
            Admission::Reject,
            "one probe at a time"
        );
        health.on_success();
        assert_eq!(health.state(), BreakerState::Closed);
        assert_eq!(health.admit(later), Admission::Pass);
    }

    #[test]
    fn failed_probe_reopens_and_abandoned_probe_frees_the_slot() {
        let start = Instant::now();
        let mut health = PeerHealth::new(config());
        for _ in 0..3 {
            health.on_failure(start);
        }
        let later = start + Duration::from_millis(1_000);
        assert_eq!(health.admit(later), Admission::Probe);
        health.on_neutral(Admission::Probe);
        assert_eq!(health.admit(later), Admission::Probe);
        health.on_failure(later);
        assert_eq!(health.state(), BreakerState::Open);
        assert_eq!(health.admit(later), Admission::Reject);
        assert_eq!(
            health.admit(later + Duration::from_millis(1_000)),
            Admission::Probe
        );
    }

    #[test]
    fn success_resets_the_failure_count() {
        let now = Instant::now();
        let mut health = PeerHealth::new(config());
        health.on_failure(now);
        health.on_failure(now);
        health.on_success();
        health.on_failure(now);
        assert_eq!(health.state(), BreakerState::Closed);
        assert_eq!(health.consecutive_failures(), 1);
    }

    #[test]
    fn healthy_only_while_closed_without_failures() {
        let now = Instant::now();
        let mut health = PeerHealth::new(config());
        assert!(health.is_healthy());
        health.on_failure(now);
        assert!(!health.is_healthy(), "closed, but backing off");
        for _ in 0..2 {
            health.on_failure(now);
        }
        assert_eq!(health.state(), BreakerState::Open);
        assert!(!health.is_healthy());
        health.on_success();
        assert!(health.is_healthy());
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let now = Instant::now();
        let mut health = PeerHealth::new(config());
        assert!(health.may_reconnect(now, Admission::Pass));
        health.on_failure(now);
        assert_eq!(health.backoff(), Duration::from_millis(10));
        assert!(!health.may_reconnect(now, Admission::Pass));
        assert!(health.may_reconnect(now + Duration::from_millis(10), Admission::Pass));
        health.on_failure(now);
        assert_eq!(health.backoff(), Duration::from_millis(20));
        for _ in 0..10 {
            health.on_failure(now);
        }
        assert_eq!(health.backoff(), Duration::from_millis(40));
        assert!(health.may_reconnect(now, Admission::Probe));
        assert_eq!(
            health.reconnect_delay(now, Admission::Pass),
            Duration::from_millis(40)
        );
        assert_eq!(
            health.reconnect_delay(now, Admission::Probe),
            Duration::ZERO
        );
    }
}
