//! What one client may hold of the server before it has proved anything:
//! media websockets that have not sent `start`, log lines about its
//! malformed messages, calls placed per minute. Each limit is a plain type
//! with the clock passed in, so its rules are tested without waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Media websockets waiting for Twilio's `start`: before it nothing about
/// them is authenticated, so each address, and everyone together, may hold
/// only so many. Twilio sends `start` within milliseconds; a socket that
/// does not is closed at the deadline (see `media_ws`).
pub(crate) struct PendingStreams {
    max: usize,
    per_address: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One pending socket's place; given back when dropped.
pub(crate) struct Pending {
    streams: Arc<PendingStreams>,
    addr: IpAddr,
}

impl PendingStreams {
    pub(crate) fn new(max: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_address,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for a socket from `addr`, if both limits allow it.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<Pending> {
        let addr = client_key(addr);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = held.values().sum();
        let mine = held.get(&addr).copied().unwrap_or(0);
        if total >= self.max || mine >= self.per_address {
            return None;
        }
        *held.entry(addr).or_default() += 1;
        Some(Pending {
            streams: self.clone(),
            addr,
        })
    }

    /// Sockets waiting now, in all.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.values().sum()
    }
}

/// What one client is counted as: an IPv4 address (also when it arrives
/// IPv4-mapped on a dual-stack socket), or an IPv6 /64 — one host is
/// routinely given a whole /64, so its single addresses mean nothing.
pub(crate) fn client_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[4..].fill(0);
            IpAddr::V6(s.into())
        }
        v4 => v4,
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut held = self.streams.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.addr);
            }
        }
    }
}

/// At most `per_window` events per `window`, server-wide: a flood of
/// malformed messages (from any number of sockets) costs the log a few
/// lines a second, and what was skipped is counted in the next line.
pub(crate) struct LogBudget {
    per_window: u32,
    window: Duration,
    /// The current window's start (none before the first event), lines
    /// written in it, lines skipped since the last one written.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

/// Longest piece of a client's message quoted in the log.
pub(crate) const QUOTED_CHARS: usize = 120;

impl LogBudget {
    pub(crate) fn new(per_window: u32, window: Duration) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(skipped since the last line)` when a line may be written now.
    pub(crate) fn take(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used, skipped) = &mut *s;
        if start.is_none_or(|t| now.saturating_duration_since(t) >= self.window) {
            *start = Some(now);
            *used = 0;
        }
        if *used < self.per_window {
            *used += 1;
            Some(std::mem::take(skipped))
        } else {
            *skipped += 1;
            None
        }
    }
}

/// `text` cut to [`QUOTED_CHARS`] characters, for quoting a client.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes)", &text[..cut], text.len()),
        None => text.to_string(),
    }
}

/// A sliding window of the last minute's uses, per key: a stolen or
/// scripted owner token places at most `per_minute` calls a minute.
pub(crate) struct PerMinute {
    per_minute: usize,
    uses: Mutex<HashMap<String, Vec<Instant>>>,
}

impl PerMinute {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute as usize,
            uses: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a use by `key` at `now` if the minute allows one; else how
    /// long until it does.
    pub(crate) fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        const MINUTE: Duration = Duration::from_secs(60);
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        let mine = uses.entry(key.to_string()).or_default();
        mine.retain(|t| now.saturating_duration_since(*t) < MINUTE);
        if mine.len() >= self.per_minute {
            let waited = mine
                .first()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
            return Err(MINUTE.saturating_sub(waited));
        }
        mine.push(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_sockets_are_capped_per_address_and_in_all() {
        let p = PendingStreams::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = p.admit(a).unwrap();
        let _a2 = p.admit(a).unwrap();
        assert!(p.admit(a).is_none(), "per address");
        let _b1 = p.admit(b).unwrap();
        assert!(p.admit(b).is_none(), "in all");
        drop(a1);
        assert_eq!(p.count(), 2);
        assert!(p.admit(b).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_mapped_ipv4_as_itself() {
        let p = PendingStreams::new(10, 1);
        let _one = p.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(p.admit("2001:db8:1:2:ffff::9".parse().unwrap()).is_none());
        assert!(p.admit("2001:db8:1:3::1".parse().unwrap()).is_some());
        let _v4 = p.admit("127.0.0.9".parse().unwrap()).unwrap();
        assert!(p.admit("::ffff:127.0.0.9".parse().unwrap()).is_none());
    }

    #[test]
    fn the_log_budget_refills_each_window_and_counts_what_it_skipped() {
        let t0 = Instant::now();
        let b = LogBudget::new(2, Duration::from_secs(1));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), Some(0));
        assert_eq!(b.take(t0), None);
        assert_eq!(b.take(t0 + Duration::from_millis(999)), None);
        assert_eq!(b.take(t0 + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn quotes_are_cut() {
        assert_eq!(quoted("short"), "short");
        let long = "é".repeat(500);
        let q = quoted(&long);
        assert!(q.starts_with(&"é".repeat(QUOTED_CHARS)));
        assert!(q.ends_with("… (1000 bytes)"), "{q}");
    }

    #[test]
    fn a_minute_holds_so_many_uses() {
        let t0 = Instant::now();
        let r = PerMinute::new(2);
        assert!(r.take("k", t0).is_ok());
        assert!(r.take("k", t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            r.take("k", t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert!(r.take("other", t0).is_ok());
        assert!(r.take("k", t0 + Duration::from_secs(60)).is_ok());
    }
}
