//! W3C `traceparent` values, carried in broker headers so one payment can be followed
//! across the three services.

/// A fresh, sampled `traceparent`: `00-<32 hex trace id>-<16 hex span id>-01`.
pub fn new_traceparent() -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        fastrand::u128(1..),
        fastrand::u64(1..)
    )
}

/// A child `traceparent`: same trace id, a new span id. Falls back to a fresh one when the
/// parent is not well-formed.
pub fn child_of(parent: Option<&str>) -> String {
    match parent.and_then(trace_id) {
        Some(trace) => format!("00-{trace}-{:016x}-01", fastrand::u64(1..)),
        None => new_traceparent(),
    }
}

/// The trace id of a well-formed `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2) && parts.next().is_none())
        .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_keeps_the_trace_id() {
        let parent = new_traceparent();
        let child = child_of(Some(&parent));
        assert_eq!(trace_id(&parent), trace_id(&child));
        assert_ne!(parent, child);
        assert!(trace_id("garbage").is_none());
        assert!(trace_id(&child_of(Some("garbage"))).is_some());
    }
}
