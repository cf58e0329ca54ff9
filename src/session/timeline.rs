//! Where the caller's audio sits in time. Two questions, kept apart from
//! the I/O so that both can be tested with made-up clocks:
//! - where a frame goes on the caller's stream ([`place`]): by the sender's
//!   media timestamp, so a gap in what Twilio sent stays a gap (filled with
//!   silence) instead of pulling everything after it earlier;
//! - when a stream position was spoken ([`StreamClock`]): audio can reach
//!   us late and in a burst (a network hiccup, a busy server), so the moment
//!   a frame *arrived* is only an upper bound on when it was spoken. The
//!   frames that arrived with the least delay pin the stream to the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The longest gap in a sender's stream filled with silence at once. A
/// longer jump in the timestamps is a broken or hostile sender, not lost
/// packets; what is beyond this is ignored.
const MAX_GAP_SECS: u64 = 1;

/// What to do with a frame of `len` samples to put it where its timestamp
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Samples of silence to insert before it (audio the sender lost).
    pub(crate) silence: usize,
    /// Samples at its head already on the stream (a repeated frame).
    pub(crate) skip: usize,
}

/// Places a frame stamped `at_ms` on a stream that holds `expected` samples
/// at `rate`. Stamps within one 20 ms frame of the end count as contiguous:
/// senders round them.
pub(crate) fn place(expected: usize, at_ms: Option<u64>, len: usize, rate: u32) -> Placement {
    let contiguous = Placement {
        silence: 0,
        skip: 0,
    };
    let Some(ms) = at_ms else {
        return contiguous;
    };
    let target = usize::try_from(ms.saturating_mul(rate as u64) / 1000).unwrap_or(usize::MAX);
    let slack = rate as usize / 50;
    if target > expected + slack {
        let most = (MAX_GAP_SECS * rate as u64) as usize;
        Placement {
            silence: (target - expected).min(most),
            skip: 0,
        }
    } else if target + slack < expected {
        Placement {
            silence: 0,
            skip: (expected - target).min(len),
        }
    } else {
        contiguous
    }
}

/// How far back the arrivals that pin the stream to the clock are taken
/// from. Long enough to see past a burst of late audio; short enough that
/// audio we dropped (which shifts later positions earlier) is forgotten.
const WINDOW: Duration = Duration::from_secs(2);

/// Maps positions of a stream at `rate` to the instants they were spoken.
#[derive(Debug)]
pub(crate) struct StreamClock {
    rate: u32,
    /// Per arrival: when it came, and when the stream must have started for
    /// it to arrive without delay (arrival minus its position).
    seen: VecDeque<(Instant, Instant)>,
}

impl StreamClock {
    pub(crate) fn new(rate: u32) -> Self {
        Self {
            rate,
            seen: VecDeque::new(),
        }
    }

    /// Audio up to position `end` arrived at `now`.
    pub(crate) fn arrived(&mut self, end: u64, now: Instant) {
        let Some(start) = now.checked_sub(self.duration(end)) else {
            return;
        };
        while self
            .seen
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.seen.pop_front();
        }
        // Keep only starts that can still be the earliest: a monotonic
        // queue, so the minimum is at the front.
        while self.seen.back().is_some_and(|(_, s)| *s >= start) {
            self.seen.pop_back();
        }
        self.seen.push_back((now, start));
    }

    /// When position `pos` was spoken; `now` before any audio arrived.
    pub(crate) fn time_of(&self, pos: u64, now: Instant) -> Instant {
        match self.seen.front() {
            Some((_, start)) => *start + self.duration(pos),
            None => now,
        }
    }

    fn duration(&self, samples: u64) -> Duration {
        Duration::from_secs_f64(samples as f64 / self.rate as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_where_their_timestamps_say() {
        let p = |expected, at_ms| place(expected, at_ms, 160, 8000);
        // No clock, or on time (within a frame of rounding): appended.
        assert_eq!(
            p(800, None),
            Placement {
                silence: 0,
                skip: 0
            }
        );
        assert_eq!(
            p(800, Some(100)),
            Placement {
                silence: 0,
                skip: 0
            }
        );
        assert_eq!(
            p(800, Some(110)),
            Placement {
                silence: 0,
                skip: 0
            }
        );
        // 200 ms lost by the sender: kept as 200 ms of silence.
        assert_eq!(
            p(800, Some(300)),
            Placement {
                silence: 1600,
                skip: 0
            }
        );
        // A jump of an hour fills at most a second.
        assert_eq!(
            p(800, Some(3_600_000)),
            Placement {
                silence: 8000,
                skip: 0
            }
        );
        // A frame sent again: what is already there is skipped.
        assert_eq!(
            p(800, Some(60)),
            Placement {
                silence: 0,
                skip: 160
            }
        );
        assert_eq!(
            p(800, Some(0)),
            Placement {
                silence: 0,
                skip: 160
            }
        );
    }

    #[test]
    fn late_bursts_keep_their_place_in_time() {
        let t0 = Instant::now();
        let ms = |m: u64| Duration::from_millis(m);
        let mut c = StreamClock::new(16_000);
        // 1 s of audio in real time, each 20 ms frame 5 ms after it ends.
        for i in 1..=50u64 {
            c.arrived(i * 320, t0 + ms(i * 20 + 5));
        }
        assert_eq!(c.time_of(16_000, t0), t0 + ms(1005));
        // Then 500 ms arrive at once, 400 ms late: placed where they were
        // spoken, not when they came.
        for i in 51..=75u64 {
            c.arrived(i * 320, t0 + ms(1905));
        }
        assert_eq!(c.time_of(24_000, t0), t0 + ms(1505));
        // Audio lost on our side (positions 1 s behind the clock from now
        // on) is forgotten once the window has passed.
        for i in 0..=150u64 {
            c.arrived(24_000 + i * 320, t0 + ms(2905 + i * 20));
        }
        assert_eq!(c.time_of(24_000 + 150 * 320, t0), t0 + ms(2905 + 150 * 20));
    }
}
