//! Epochs and availability, as Ratio1 defines them (pure).
//!
//! Epochs have a fixed length from a genesis time:
//! `epoch(t) = ⌊(t − genesis) / length⌋`. A node's availability in an
//! epoch comes from the times its heartbeats were seen in it: sorted, they
//! form runs, a run going on while each gap is within `[hb/2, hb + 5 s]`
//! (`hb` the heartbeat interval); the seconds available are the sum over
//! runs of `last − first`, and
//!
//! `availability = round(round(available / L, 4) × 255)`
//!
//! a value 0..255, where both roundings are half to even (Python's `round`,
//! as Ratio1's oracles compute it). Here in integers: no float can land on
//! the other side of a tie.

/// Slack above the heartbeat interval that a gap may have and still
/// continue a run (Ratio1: 5 s).
pub const GAP_SLACK_MS: u64 = 5_000;

/// Default genesis: 2025-01-01T00:00:00Z (a network sets its own, the
/// same on every node).
pub const DEFAULT_GENESIS_MS: u64 = 1_735_689_600_000;

/// The network's epochs: a genesis time and a length, in Unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epochs {
    pub genesis_ms: u64,
    pub length_ms: u64,
}

impl Epochs {
    /// Ratio1 mainnet's length: one day.
    pub const DAY_MS: u64 = 24 * 3600 * 1000;

    /// The epoch `t` falls in; `None` before genesis.
    pub fn at(&self, t_ms: u64) -> Option<u64> {
        t_ms.checked_sub(self.genesis_ms).map(|d| d / self.length_ms.max(1))
    }

    /// `[start, end)` of `epoch`, in Unix ms.
    pub fn bounds(&self, epoch: u64) -> (u64, u64) {
        let start = self.genesis_ms.saturating_add(epoch.saturating_mul(self.length_ms));
        (start, start.saturating_add(self.length_ms))
    }
}

/// `n / d` rounded half to even (`d > 0`).
fn div_round_half_even(n: u128, d: u128) -> u128 {
    let (q, r) = (n / d, n % d);
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

/// `round(round(available / length, 4) × 255)`, both half to even; 0..255.
pub fn score(available_ms: u64, length_ms: u64) -> u8 {
    if length_ms == 0 {
        return 0;
    }
    let ten_thousandths = div_round_half_even(available_ms.min(length_ms) as u128 * 10_000, length_ms as u128);
    div_round_half_even(ten_thousandths * 255, 10_000) as u8
}

/// Runs of heartbeats folded as they come, in time order: what a node
/// keeps per peer instead of every time (three numbers, not a day of
/// heartbeats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Runs {
    run_start: u64,
    prev: u64,
    closed: u64,
    any: bool,
}

impl Runs {
    /// Adds a heartbeat seen at `t` (ms); one older than the last is
    /// ignored (times are taken in order).
    pub fn add(&mut self, t: u64, hb_ms: u64) {
        if !self.any {
            *self = Runs { run_start: t, prev: t, closed: 0, any: true };
            return;
        }
        if t < self.prev {
            return;
        }
        let gap = t - self.prev;
        if !(hb_ms / 2..=hb_ms + GAP_SLACK_MS).contains(&gap) {
            self.closed += self.prev - self.run_start;
            self.run_start = t;
        }
        self.prev = t;
    }

    /// Milliseconds covered so far: the closed runs and the open one.
    pub fn available_ms(&self) -> u64 {
        self.closed + (self.prev - self.run_start)
    }
}

/// Milliseconds covered by runs of `beats` (times in ms, any order) whose
/// gaps stay within `[hb/2, hb + GAP_SLACK_MS]`.
pub fn available_ms(beats: &[u64], hb_ms: u64) -> u64 {
    let mut t: Vec<u64> = beats.to_vec();
    t.sort_unstable();
    let mut runs = Runs::default();
    for b in t {
        runs.add(b, hb_ms);
    }
    runs.available_ms()
}

/// A node's availability in `epoch`: its heartbeats seen in that epoch
/// (others are ignored) scored against the epoch's length.
pub fn availability(epochs: &Epochs, epoch: u64, beats: &[u64], hb_ms: u64) -> u8 {
    let (start, end) = epochs.bounds(epoch);
    let inside: Vec<u64> = beats.iter().copied().filter(|t| (start..end).contains(t)).collect();
    score(available_ms(&inside, hb_ms), epochs.length_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_count_from_genesis() {
        let e = Epochs { genesis_ms: 1_000, length_ms: 60_000 };
        assert_eq!(e.at(999), None);
        assert_eq!(e.at(1_000), Some(0));
        assert_eq!(e.at(60_999), Some(0));
        assert_eq!(e.at(61_000), Some(1));
        assert_eq!(e.bounds(2), (121_000, 181_000));
    }

    /// Worked by hand (the half-to-even ties are the point):
    /// - 1/8 = 0.125 → 0.125 (4 places) → 31.875 → 32;
    /// - 0.5 → 127.5 → 128 (tie, to even);
    /// - 0.00196 → 0.002 (0.00196 rounds up at 4 places: 0.0020) → 0.51 → 1;
    /// - 0.00005 → tie at 4 places → 0.0000 (even) → 0; 0.00015 → 0.0002 → 0.051 → 0;
    /// - 0.0098 → 2.499 → 2; 0.0099 → 2.5245 → 3;
    /// - 0.2 → 51 exactly; 0.1 → 25.5 → 26 (tie, to even); 0.3 → 76.5 → 76 (tie, to even);
    /// - 0.7 → 178.5 → 178; 0.9 → 229.5 → 230 (the oracles' threshold).
    #[test]
    fn scores_round_half_to_even_twice_as_ratio1_does() {
        let l = 1_000_000u64;
        let table: &[(u64, u8)] = &[
            (0, 0),
            (l, 255),
            (2 * l, 255),
            (125_000, 32),
            (500_000, 128),
            (1_960, 1),
            (50, 0),
            (150, 0),
            (9_800, 2),
            (9_900, 3),
            (200_000, 51),
            (100_000, 26),
            (300_000, 76),
            (700_000, 178),
            (900_000, 230),
        ];
        for &(avail, want) in table {
            assert_eq!(score(avail, l), want, "available {avail} of {l}");
        }
        assert_eq!(score(5, 0), 0, "an epoch of no length scores nothing");
    }

    #[test]
    fn runs_break_on_gaps_outside_the_window() {
        let hb = 10_000;
        // Regular: one run of 40 s.
        assert_eq!(available_ms(&[0, 10_000, 20_000, 30_000, 40_000], hb), 40_000);
        // Order does not matter.
        assert_eq!(available_ms(&[40_000, 0, 20_000, 10_000, 30_000], hb), 40_000);
        // 15 s (= hb + 5 s) still continues; 15.001 s breaks.
        assert_eq!(available_ms(&[0, 15_000, 30_000], hb), 30_000);
        assert_eq!(available_ms(&[0, 15_001, 25_001], hb), 10_000);
        // A gap under hb/2 breaks the run too (5 s is in, 4.999 s is not).
        assert_eq!(available_ms(&[0, 5_000], hb), 5_000);
        assert_eq!(available_ms(&[0, 4_999, 14_999], hb), 10_000);
        assert_eq!(available_ms(&[], hb), 0);
        assert_eq!(available_ms(&[7], hb), 0);
    }

    /// Deterministic pseudo-random numbers for the properties below.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn perfect_heartbeats_score_about_255_times_l_minus_hb_over_l() {
        for (length, hb) in [(60_000u64, 1_000u64), (60_000, 2_000), (600_000, 10_000), (Epochs::DAY_MS, 10_000)] {
            let e = Epochs { genesis_ms: 5_000, length_ms: length };
            let (start, end) = e.bounds(3);
            let beats: Vec<u64> = (start..end).step_by(hb as usize).collect();
            let want = score(length - hb, length);
            assert_eq!(availability(&e, 3, &beats, hb), want, "L {length} hb {hb}");
            assert!(want as u64 >= 255 * (length - hb) / length, "L {length} hb {hb}: {want}");
            // Heartbeats of other epochs count for nothing here.
            let mut more = beats.clone();
            more.extend([start - 1, end, end + hb]);
            assert_eq!(availability(&e, 3, &more, hb), want);
        }
    }

    #[test]
    fn a_node_down_half_the_epoch_scores_about_half() {
        let (length, hb) = (600_000u64, 2_000u64);
        let e = Epochs { genesis_ms: 0, length_ms: length };
        // Up for the first half, down (no heartbeat) for the second.
        let beats: Vec<u64> = (0..length / 2).step_by(hb as usize).collect();
        let a = availability(&e, 0, &beats, hb);
        assert!((125..=128).contains(&a), "{a}");
        // Down in the middle: two runs, the gap counts for nothing.
        let mut split: Vec<u64> = (0..length / 4).step_by(hb as usize).collect();
        split.extend((3 * length / 4..length).step_by(hb as usize));
        let b = availability(&e, 0, &split, hb);
        assert!((124..=128).contains(&b), "{b}");
    }

    #[test]
    fn jitter_within_bounds_does_not_break_a_run() {
        let mut seed = 0x2545f4914f6cdd1d;
        for _ in 0..200 {
            let hb = 1_000 + xorshift(&mut seed) % 20_000;
            let length = hb * (20 + xorshift(&mut seed) % 200);
            let e = Epochs { genesis_ms: 0, length_ms: length };
            // Each heartbeat off its slot by up to hb/4 either way: gaps stay
            // within [hb/2, 3hb/2] ⊂ [hb/2, hb + 5 s] while hb ≤ 10 s;
            // larger hb only late by up to 5 s / 2.
            let j = (hb / 4).min(GAP_SLACK_MS / 2);
            let beats: Vec<u64> = (1..length / hb)
                .map(|k| k * hb + xorshift(&mut seed) % (2 * j + 1) - j)
                .filter(|t| *t < length)
                .collect();
            let (first, last) = (beats.iter().min().unwrap(), beats.iter().max().unwrap());
            assert_eq!(available_ms(&beats, hb), last - first, "hb {hb}: one run");
            assert_eq!(availability(&e, 0, &beats, hb), score(last - first, length));
        }
    }

    #[test]
    fn more_heartbeats_never_score_less_within_a_run() {
        // Filling a hole (a missing heartbeat that split two runs) joins them.
        let hb = 2_000;
        let e = Epochs { genesis_ms: 0, length_ms: 120_000 };
        let full: Vec<u64> = (0..120_000).step_by(hb as usize).collect();
        let mut holed = full.clone();
        holed.retain(|t| !(40_000..50_000).contains(t));
        assert!(availability(&e, 0, &holed, hb) < availability(&e, 0, &full, hb));
    }
}
