//! Round-trip time estimation and the retransmission timeout (docs/protocol.md §4.5).
//!
//! The formula is the official client's and agent's, so both ends of a session agree on how
//! patient to be: `rttvar = (1−β)·rttvar + β·|rtt − sample|` using the *old* rtt, then
//! `rtt = (1−α)·rtt + α·sample`, then `RTO = rtt + max(granularity, 4·rttvar)`, capped.
//! Unlike the official code, samples come only from messages sent exactly once (Karn's
//! algorithm): an ack for a retransmitted message cannot say which copy it answers.

use std::time::Duration;

/// RTT estimator state.
#[derive(Clone, Debug, PartialEq)]
pub struct RttEstimator {
    /// Smoothed round-trip time, seconds.
    rtt: f64,
    /// Round-trip time variation, seconds.
    rttvar: f64,
    rto: Duration,
    max_rto: Duration,
}

/// Initial RTT (`DefaultRoundTripTime`).
pub const INITIAL_RTT: Duration = Duration::from_millis(100);
/// Initial RTO (`DefaultTransmissionTimeout`).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// RTO cap of the official endpoints (`MaxTransmissionTimeout`).
pub const DEFAULT_MAX_RTO: Duration = Duration::from_secs(1);
const ALPHA: f64 = 1.0 / 8.0;
const BETA: f64 = 1.0 / 4.0;
const CLOCK_GRANULARITY: f64 = 0.010;

impl RttEstimator {
    /// A fresh estimator: RTT 100 ms, variation 0, RTO 200 ms.
    pub fn new(max_rto: Duration) -> Self {
        Self {
            rtt: INITIAL_RTT.as_secs_f64(),
            rttvar: 0.0,
            rto: INITIAL_RTO.min(max_rto),
            max_rto,
        }
    }

    /// Folds in one round-trip sample.
    pub fn on_sample(&mut self, sample: Duration) {
        let sample = sample.as_secs_f64();
        self.rttvar = (1.0 - BETA) * self.rttvar + BETA * (self.rtt - sample).abs();
        self.rtt = (1.0 - ALPHA) * self.rtt + ALPHA * sample;
        let rto = self.rtt + (4.0 * self.rttvar).max(CLOCK_GRANULARITY);
        self.rto = Duration::try_from_secs_f64(rto)
            .unwrap_or(self.max_rto)
            .min(self.max_rto);
    }

    /// The current retransmission timeout.
    pub fn rto(&self) -> Duration {
        self.rto
    }

    /// The smoothed round-trip time.
    pub fn rtt(&self) -> Duration {
        Duration::try_from_secs_f64(self.rtt).unwrap_or(self.max_rto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_sample_matches_the_protocol_example() {
        let mut rtt = RttEstimator::new(DEFAULT_MAX_RTO);
        assert_eq!(rtt.rto(), Duration::from_millis(200));
        rtt.on_sample(Duration::from_millis(50));
        // rttvar 12.5 ms, rtt 93.75 ms, RTO 93.75 + 50 = 143.75 ms.
        assert_eq!(rtt.rtt(), Duration::from_micros(93_750));
        assert_eq!(rtt.rto(), Duration::from_micros(143_750));
    }

    #[test]
    fn rto_is_capped_and_floored_by_granularity() {
        let mut rtt = RttEstimator::new(DEFAULT_MAX_RTO);
        for _ in 0..20 {
            rtt.on_sample(Duration::from_secs(5));
        }
        assert_eq!(rtt.rto(), DEFAULT_MAX_RTO);
        let mut steady = RttEstimator::new(DEFAULT_MAX_RTO);
        for _ in 0..200 {
            steady.on_sample(Duration::from_millis(1));
        }
        // With no variation left the RTO is rtt + 10 ms granularity.
        assert!(
            steady.rto() >= Duration::from_millis(10),
            "{:?}",
            steady.rto()
        );
        assert!(
            steady.rto() < Duration::from_millis(12),
            "{:?}",
            steady.rto()
        );
    }
}
