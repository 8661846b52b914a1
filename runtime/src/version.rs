//! Dotted version numbers, compared the way the agent compares them (docs/protocol.md §6.1).

use std::cmp::Ordering;

/// The ClientVersion ssm-tether reports in the OpenDataChannel frame and the handshake.
///
/// The agent derives the port mode and smux keepalive from it (§6.1): it must be ≥ 1.1.70 for
/// mux mode and > 1.2.331.0 so that the agent disables smux keepalive, which would otherwise
/// reset the service's idle timer and kill idle streams after 30 s without NOPs from us. Four
/// numeric components, like the official client's.
pub const CLIENT_VERSION: &str = "1.2.650.0";

/// Compares two dotted versions numerically, component by component; a missing component
/// counts as 0 (so `3.1` == `3.1.0.0`, unlike the official client, which refuses to compare
/// versions of different lengths, §13 #21).
///
/// Returns `None` if either is not dotted decimal numbers.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let a = parse(a)?;
    let b = parse(b)?;
    let len = a.len().max(b.len());
    let component = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    Some(
        (0..len)
            .map(|i| component(&a, i).cmp(&component(&b, i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal),
    )
}

fn parse(version: &str) -> Option<Vec<u64>> {
    version
        .trim()
        .split('.')
        .map(|part| part.parse::<u64>().ok())
        .collect()
}

/// Whether `version` is strictly greater than `than`; `None` if either does not parse.
pub fn greater(version: &str, than: &str) -> Option<bool> {
    compare(version, than).map(Ordering::is_gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_numerically_not_lexically() {
        assert_eq!(compare("3.3.987.0", "3.0.196.0"), Some(Ordering::Greater));
        assert_eq!(compare("3.0.196.0", "3.0.196.0"), Some(Ordering::Equal));
        assert_eq!(compare("3.10.0.0", "3.9.9.9"), Some(Ordering::Greater));
        assert_eq!(compare("3.1", "3.1.0.0"), Some(Ordering::Equal));
        assert_eq!(compare("1.2.650.0", "1.2.331.0"), Some(Ordering::Greater));
        assert_eq!(compare("3.x", "3.0"), None);
        assert_eq!(greater("", "1"), None);
    }
}
