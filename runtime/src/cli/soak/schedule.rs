//! Which faults each compressed "hour" gets, decided from the seed alone (sans-IO): the same
//! seed gives the same scenario. The steady faults (hourly recycle with skew, stale cells,
//! 1 % frame loss, the maximum session duration) are emulator settings; this schedule adds
//! the occasional ones.

use std::time::Duration;

use ssm_emulator::faults::ResumeFailCode;

/// One service-side termination per this many hours.
pub(super) const TERMINATE_EVERY_HOURS: u64 = 6;

/// A fault fired once during an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The next ResumeSession fails with this error (one call; the runtime's retry succeeds).
    ResumeFails(ResumeFailCode),
    /// The client's data-channel sockets stop carrying anything (a sleeping laptop, a dead
    /// NAT mapping) until the runtime notices and opens new ones.
    BlackHole,
    /// The service terminates one session (the youngest, so that the oldest can live to its
    /// maximum duration and be rotated).
    Terminate,
}

/// A fault and when in its hour it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Planned {
    /// The fault.
    pub(super) fault: Fault,
    /// Offset from the start of the hour.
    pub(super) at: Duration,
}

/// The faults of hour `hour` (0-based) for `seed`, in firing order, offsets within 20–80 % of
/// the hour (away from its edges, where the scheduled recycle of a session may fall too).
pub(super) fn hour_faults(seed: u64, hour: u64, hour_length: Duration) -> Vec<Planned> {
    let roll = splitmix(seed ^ hour.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let at = |salt: u64| {
        let permille = 200 + (splitmix(roll ^ salt) % 600) as u32;
        hour_length * permille / 1000
    };
    let mut faults = Vec::new();
    // Roughly one hour in four has a failing resume, alternating the two errors a real
    // account sees: throttling and a (transient) access denied.
    match roll % 8 {
        3 => faults.push(Planned {
            fault: Fault::ResumeFails(ResumeFailCode::Throttling),
            at: at(1),
        }),
        5 => faults.push(Planned {
            fault: Fault::ResumeFails(ResumeFailCode::AccessDenied),
            at: at(1),
        }),
        _ => {}
    }
    let terminate = (hour + 1).is_multiple_of(TERMINATE_EVERY_HOURS);
    if terminate {
        faults.push(Planned {
            fault: Fault::Terminate,
            at: at(2),
        });
    } else if (roll >> 8).is_multiple_of(10) {
        // A black hole now and then: about one hour in ten, never with a termination.
        faults.push(Planned {
            fault: Fault::BlackHole,
            at: at(3),
        });
    }
    faults.sort_by_key(|p| p.at);
    faults
}

/// SplitMix64: a well-mixed 64-bit hash, enough to spread faults over hours.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_hour_terminates_and_other_faults_are_occasional() {
        let hour = Duration::from_secs(1);
        let plans: Vec<Vec<Planned>> = (0..600).map(|h| hour_faults(7, h, hour)).collect();
        let count =
            |f: &dyn Fn(&Fault) -> bool| plans.iter().flatten().filter(|p| f(&p.fault)).count();
        assert_eq!(count(&|f| *f == Fault::Terminate), 100);
        let throttles = count(&|f| *f == Fault::ResumeFails(ResumeFailCode::Throttling));
        let denied = count(&|f| *f == Fault::ResumeFails(ResumeFailCode::AccessDenied));
        let holes = count(&|f| *f == Fault::BlackHole);
        assert!((40..110).contains(&throttles), "{throttles}");
        assert!((40..110).contains(&denied), "{denied}");
        assert!((25..90).contains(&holes), "{holes}");
        for p in plans.iter().flatten() {
            assert!(p.at >= hour / 5 && p.at < hour * 4 / 5, "{p:?}");
        }
        assert_eq!(hour_faults(7, 5, hour), plans[5], "same seed, same hour");
    }
}
