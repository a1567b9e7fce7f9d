//! The economy's arithmetic (pure): Proof-of-Availability rewards per
//! license class and the Proof-of-AI split, in exact integers
//! (docs/economy.md).
//!
//! Amounts are in the token's smallest unit, 10⁻¹⁸ R1 ([`UNIT`] per R1), in
//! `u128`. Every division rounds down; where a total must be paid exactly,
//! an epoch's amount is the difference of two rounded cumulative totals,
//! so the roundings never add up to more or less than the total.

pub mod ledger;
pub mod metrics;
pub mod poai;
pub mod registry;
pub mod service;

/// Smallest units per R1.
pub const UNIT: u128 = 1_000_000_000_000_000_000;

/// Amounts in JSON: decimal strings of smallest units (a JSON number
/// would lose digits in most readers).
pub mod units {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not an amount")))
    }
}

/// An amount as R1 with all 18 decimals, trailing zeros cut.
pub fn show_r1(units: u128) -> String {
    let (whole, frac) = (units / UNIT, units % UNIT);
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:018}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// Parses an amount in R1 (up to 18 decimals) into smallest units.
pub fn parse_r1(s: &str) -> Result<u128, String> {
    let bad = || format!("{s:?} is not an amount of R1");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty() || frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| bad())? };
    let frac: u128 = if frac.is_empty() { 0 } else { format!("{frac:0<18}").parse().map_err(|_| bad())? };
    whole.checked_mul(UNIT).and_then(|w| w.checked_add(frac)).ok_or_else(bad)
}
/// Scale of the MND curve's weights (a weight of 1 is `WEIGHT_SCALE`).
pub const WEIGHT_SCALE: u128 = 1_000_000_000;

/// Ratio1's constants, each configurable (`--economy-constants`: a JSON
/// object of any of these fields; the rest keep Ratio1's values).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constants {
    /// Token supply cap, whole R1.
    pub supply: u128,
    /// ND: share of the supply (basis points), licenses at most, epochs.
    pub nd_share_bp: u128,
    pub nd_licenses: u128,
    pub nd_epochs: u64,
    /// MND: epochs without mining from genesis, mining epochs, the
    /// logistic curve's steepness and midpoint (tenths of the window),
    /// and the caps (basis points of the supply).
    pub mnd_cliff: u64,
    pub mnd_epochs: u64,
    pub mnd_steepness: i128,
    pub mnd_midpoint_tenths: i128,
    pub mnd_license_cap_bp: u128,
    pub mnd_total_cap_bp: u128,
    /// GND: share of the supply (basis points), epochs.
    pub gnd_share_bp: u128,
    pub gnd_epochs: u64,
    /// Adoption: licenses sold and PoAI volume (smallest units of the
    /// payment token, 10⁻⁶ USDC) at which each half of it is full.
    pub adoption_licenses: u128,
    pub adoption_poai_volume: u128,
    /// PoAI: the nodes' share (percent; the rest is burned), least epochs.
    pub poai_node_percent: u128,
    pub poai_min_epochs: u64,
    /// Share of a license sale burned (percent).
    pub sale_burn_percent: u128,
}

impl Default for Constants {
    fn default() -> Self {
        Self {
            supply: 161_803_398,
            nd_share_bp: 4_500,
            nd_licenses: 46_224,
            nd_epochs: 1_080,
            mnd_cliff: 223,
            mnd_epochs: 900,
            mnd_steepness: 5,
            mnd_midpoint_tenths: 7,
            mnd_license_cap_bp: 200,
            mnd_total_cap_bp: 2_610,
            gnd_share_bp: 2_890,
            gnd_epochs: 365,
            adoption_licenses: 7_500,
            adoption_poai_volume: 5_000_000 * 1_000_000,
            poai_node_percent: 85,
            poai_min_epochs: 30,
            sale_burn_percent: 20,
        }
    }
}

impl Constants {
    /// Refuses constants the formulas cannot use (a zero divisor, a share
    /// over the whole).
    pub fn validate(&self) -> Result<(), String> {
        let zero = [
            ("nd_licenses", self.nd_licenses == 0),
            ("nd_epochs", self.nd_epochs == 0),
            ("mnd_epochs", self.mnd_epochs == 0),
            ("gnd_epochs", self.gnd_epochs == 0),
            ("adoption_licenses", self.adoption_licenses == 0),
            ("adoption_poai_volume", self.adoption_poai_volume == 0),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("{name} must be positive"));
        }
        if self.nd_share_bp + self.gnd_share_bp + self.mnd_total_cap_bp > 10_000 {
            return Err("nd_share_bp + gnd_share_bp + mnd_total_cap_bp exceed the whole supply (10000)".into());
        }
        if self.poai_node_percent > 100 || self.sale_burn_percent > 100 {
            return Err("percentages are at most 100".into());
        }
        // The curve's exponent stays within ±8 (the integer exp's range).
        if self.supply > u64::MAX as u128
            || !(1..=8).contains(&self.mnd_steepness)
            || !(0..=10).contains(&self.mnd_midpoint_tenths)
        {
            return Err("supply fits 64 bits, mnd_steepness is 1..=8 and mnd_midpoint_tenths 0..=10".into());
        }
        Ok(())
    }

    pub fn supply_units(&self) -> u128 {
        self.supply * UNIT
    }

    fn share(&self, bp: u128) -> u128 {
        self.supply_units() / 10_000 * bp
    }

    /// What one ND license earns at most over its life (≈ 1,575.19 R1).
    pub fn nd_license_cap(&self) -> u128 {
        self.share(self.nd_share_bp) / self.nd_licenses
    }

    /// What all GND licenses earn together.
    pub fn gnd_total(&self) -> u128 {
        self.share(self.gnd_share_bp)
    }

    /// The most one MND license may be assigned, and all together.
    pub fn mnd_caps(&self) -> (u128, u128) {
        (self.share(self.mnd_license_cap_bp), self.share(self.mnd_total_cap_bp))
    }
}

/// Epoch `k`'s part (0-based) of `total` released evenly over `epochs`:
/// `⌊total·(k+1)/epochs⌋ − ⌊total·k/epochs⌋`; zero from `epochs` on. The
/// parts sum to `total` exactly.
pub fn linear_part(total: u128, epochs: u64, k: u64) -> u128 {
    if k >= epochs {
        return 0;
    }
    let cum = |j: u64| total * j as u128 / epochs as u128;
    cum(k + 1) - cum(k)
}

/// `amount × avail / 255`, rounded down.
pub fn by_availability(amount: u128, avail: u8) -> u128 {
    amount * avail as u128 / 255
}

/// ND reward for its `k`-th epoch (counted from the license's first).
pub fn nd_reward(c: &Constants, k: u64, avail: u8) -> u128 {
    by_availability(linear_part(c.nd_license_cap(), c.nd_epochs, k), avail)
}

/// GND reward for its `k`-th epoch, of a license assigned `assigned`.
pub fn gnd_reward(c: &Constants, assigned: u128, k: u64, avail: u8) -> u128 {
    by_availability(linear_part(assigned, c.gnd_epochs, k), avail)
}

/// `e^z` for `z = num/den`, at [`UNIT`] scale, by its Taylor series in
/// integers (the same digits on every machine). `|z| ≤ 8`.
fn exp_fixed(num: i128, den: i128) -> u128 {
    let neg = (num < 0) != (den < 0);
    let (num, den) = (num.unsigned_abs(), den.unsigned_abs());
    // Σ zᵏ/k!, each term from the last: t_k = t_{k−1}·num/(den·k).
    let mut term = UNIT;
    let mut sum = UNIT;
    let mut k = 1u128;
    while term > 0 {
        term = term * num / (den * k);
        sum += term;
        k += 1;
    }
    if neg {
        UNIT * UNIT / sum
    } else {
        sum
    }
}

/// The MND release curve: weights `w(x) = 1 / (1 + e^(−s(x − m·n)/n))`
/// for `x` in `0..n` (n mining epochs, s steepness, m midpoint), at
/// [`WEIGHT_SCALE`], and their running sums. `P = Σ w` (Ratio1: 300.50524).
#[derive(Clone, Debug)]
pub struct MndCurve {
    /// `cum[x]` = Σ_{y<x} w(y); `cum[n]` = P.
    pub cum: Vec<u128>,
}

impl MndCurve {
    pub fn new(c: &Constants) -> Self {
        let n = c.mnd_epochs as i128;
        let mut cum = vec![0u128];
        for x in 0..n {
            // −s(x − m·n/10)/n = s(m·n − 10x) / (10n)
            let e = exp_fixed(c.mnd_steepness * (c.mnd_midpoint_tenths * n - 10 * x), 10 * n);
            let w = WEIGHT_SCALE * UNIT / (UNIT + e);
            cum.push(cum.last().expect("non-empty") + w);
        }
        Self { cum }
    }

    /// `P` at [`WEIGHT_SCALE`].
    pub fn total_weight(&self) -> u128 {
        *self.cum.last().expect("non-empty")
    }

    /// Most a license assigned `assigned` earns in mining epoch `x`:
    /// `assigned · w(x) / P`, as a difference of rounded running totals
    /// (the window pays `assigned` exactly).
    pub fn max_at(&self, assigned: u128, x: u64) -> u128 {
        let n = self.cum.len() as u64 - 1;
        if x >= n {
            return 0;
        }
        let p = self.total_weight();
        let cum = |j: usize| assigned * self.cum[j] / p;
        cum(x as usize + 1) - cum(x as usize)
    }
}

/// The adoption factor at [`UNIT`] scale:
/// `min(1, (sold / licenses threshold + volume / volume threshold) / 2)`.
pub fn adoption(c: &Constants, licenses_sold: u128, poai_volume: u128) -> u128 {
    let a = licenses_sold * UNIT / c.adoption_licenses / 2 + poai_volume * UNIT / c.adoption_poai_volume / 2;
    a.min(UNIT)
}

/// `⌊a × f / UNIT⌋` for a fraction `f ≤ UNIT`, without overflow for any
/// amount `a` (`a × f` alone passes `u128` from about 3.4 × 10²⁰ R1).
fn times_fraction(a: u128, f: u128) -> u128 {
    a / UNIT * f + a % UNIT * f / UNIT
}

/// One MND epoch: what is paid and what goes to or comes from the buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MndEpoch {
    /// Paid this epoch: the adopted part of the availability-scaled
    /// maximum, plus what the buffer released.
    pub paid: u128,
    /// Added to the buffer (the part adoption withheld).
    pub withheld: u128,
    /// Taken from the buffer (included in `paid`).
    pub released: u128,
}

/// An MND license as its rewards see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MndLicense {
    /// What it earns over the window, at most ([`check_mnd_assignment`]).
    pub assigned: u128,
    /// Its creation epoch; mining starts at the later of it and the cliff.
    pub first_mining_epoch: u64,
}

/// MND reward in `epoch` for `license`, with `buffer` the amount withheld
/// so far.
///
/// - in mining epoch `x`: `full = max(x) · avail/255`; `paid = full ·
///   adoption`; `withheld = full − paid`;
/// - the buffer then releases `min(buffer, max(x)) · adoption`: at most
///   one epoch's maximum per epoch, more as adoption grows. After the
///   window, `max` is the window's mean (`assigned / n`).
pub fn mnd_epoch(
    c: &Constants,
    curve: &MndCurve,
    license: &MndLicense,
    epoch: u64,
    avail: u8,
    adoption: u128,
    buffer: u128,
) -> MndEpoch {
    let assigned = license.assigned;
    let first = license.first_mining_epoch.max(c.mnd_cliff);
    if epoch < first {
        return MndEpoch::default();
    }
    let x = epoch - first;
    let max = if x < c.mnd_epochs { curve.max_at(assigned, x) } else { assigned / c.mnd_epochs as u128 };
    let full = if x < c.mnd_epochs { by_availability(max, avail) } else { 0 };
    let adopted = times_fraction(full, adoption);
    let released = times_fraction(buffer.min(max), adoption);
    MndEpoch { paid: adopted + released, withheld: full - adopted, released }
}

/// Why a job, an assignment or an amount is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EconomyError {
    #[error("a job runs at least {0} epochs, not {1}")]
    TooShort(u64, u64),
    #[error("the job's cost overflows")]
    Overflow,
    #[error("an MND license may be assigned at most {cap} units, not {asked}")]
    MndLicenseCap { cap: u128, asked: u128 },
    #[error("all MND licenses together may be assigned at most {cap} units; this one would make {total}")]
    MndTotalCap { cap: u128, total: u128 },
}

/// A PoAI job's cost, paid into escrow: `price per epoch × nodes × epochs`.
pub fn job_cost(c: &Constants, price_per_epoch: u128, nodes: u64, epochs: u64) -> Result<u128, EconomyError> {
    if epochs < c.poai_min_epochs {
        return Err(EconomyError::TooShort(c.poai_min_epochs, epochs));
    }
    price_per_epoch.checked_mul(nodes as u128).and_then(|v| v.checked_mul(epochs as u128)).ok_or(EconomyError::Overflow)
}

/// One node's share of a PoAI epoch: (to its license owner, burned). The
/// two add up to `share` exactly; the rounding goes to the burn.
pub fn poai_split(c: &Constants, share: u128) -> (u128, u128) {
    let node = share * c.poai_node_percent / 100;
    (node, share - node)
}

/// A license sale: (kept, burned), adding up to `price`.
pub fn sale_split(c: &Constants, price: u128) -> (u128, u128) {
    let burned = price * c.sale_burn_percent / 100;
    (price - burned, burned)
}

/// Checks an MND assignment against both caps, given what the others hold.
pub fn check_mnd_assignment(c: &Constants, asked: u128, others: u128) -> Result<(), EconomyError> {
    let (one, all) = c.mnd_caps();
    if asked > one {
        return Err(EconomyError::MndLicenseCap { cap: one, asked });
    }
    let total = asked.saturating_add(others);
    if total > all {
        return Err(EconomyError::MndTotalCap { cap: all, total });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r1(units: u128) -> f64 {
        units as f64 / UNIT as f64
    }

    #[test]
    fn nd_pays_its_cap_exactly_over_1080_full_epochs() {
        let c = Constants::default();
        let cap = c.nd_license_cap();
        // 0.45 × 161,803,398 / 46,224 = 1,575.1888… R1 (worked example in
        // docs/economy.md: epochs 0..2).
        assert_eq!(cap, 161_803_398 * UNIT / 10_000 * 4_500 / 46_224);
        assert_eq!(cap, 1_575_188_843_457_943_925_233);
        let first: Vec<u128> = [(0, 255), (1, 230), (2, 0)].map(|(k, a)| nd_reward(&c, k, a)).to_vec();
        assert_eq!(first, [1_458_508_188_386_985_115, 1_315_517_189_525_515_986, 0]);
        assert!((r1(cap) - 1_575.189_7).abs() < 1e-3, "{}", r1(cap));
        let total: u128 = (0..1_080).map(|k| nd_reward(&c, k, 255)).sum();
        assert_eq!(total, cap);
        // ≈ 1.4585 R1 per epoch, nothing after the window.
        assert!((r1(nd_reward(&c, 0, 255)) - 1.4585).abs() < 1e-4);
        assert_eq!(nd_reward(&c, 1_080, 255), 0);
        // Availability scales it, rounded down: 128/255 of the part.
        let part = linear_part(cap, 1_080, 7);
        assert_eq!(nd_reward(&c, 7, 128), part * 128 / 255);
        assert_eq!(nd_reward(&c, 7, 0), 0);
        let half: u128 = (0..1_080).map(|k| nd_reward(&c, k, 128)).sum();
        assert!(half <= cap * 128 / 255 && cap * 128 / 255 - half < 1_080, "floors lose under 1 unit per epoch");
    }

    #[test]
    fn linear_parts_add_up_whatever_the_remainder() {
        for (total, n) in [(10u128, 3u64), (1, 1_080), (1_000_003, 365), (u64::MAX as u128, 7)] {
            assert_eq!((0..n).map(|k| linear_part(total, n, k)).sum::<u128>(), total, "{total}/{n}");
            assert!((0..n).all(|k| linear_part(total, n, k) <= total / n as u128 + 1));
        }
    }

    #[test]
    fn gnd_pays_its_assignment_over_365_epochs() {
        let c = Constants::default();
        let all = c.gnd_total();
        assert!((r1(all) - 0.289 * 161_803_398.0).abs() < 1.0);
        assert_eq!((0..365).map(|k| gnd_reward(&c, all, k, 255)).sum::<u128>(), all);
        assert_eq!(gnd_reward(&c, all, 365, 255), 0);
        // Worked example: 1,000 R1 assigned, epoch at 204/255 (80%).
        assert_eq!(gnd_reward(&c, 1_000 * UNIT, 0, 204), 1_000 * UNIT / 365 * 204 / 255);
    }

    #[test]
    fn the_mnd_curve_is_ratio1s_logistic_and_pays_exactly() {
        let c = Constants::default();
        let curve = MndCurve::new(&c);
        // P = Σ_{x<900} 1/(1+e^(−5(x−630)/900)) = 300.50524.
        let p = curve.total_weight() as f64 / WEIGHT_SCALE as f64;
        assert!((p - 300.50524).abs() < 1e-4, "{p}");
        // The integer exp agrees with f64's to 1e-12 on the window.
        for x in [0i128, 100, 630, 899] {
            let z = 5.0 * (630.0 - x as f64) / 900.0;
            let fixed = exp_fixed(5 * (7 * 900 - 10 * x), 10 * 900) as f64 / UNIT as f64;
            assert!((fixed - z.exp()).abs() < 1e-12 * z.exp().max(1.0), "x={x}: {fixed} vs {}", z.exp());
        }
        let assigned = 1_000_000 * UNIT;
        let total: u128 = (0..900).map(|x| curve.max_at(assigned, x)).sum();
        assert_eq!(total, assigned);
        // Rising: the last epoch pays about 7.6× the first.
        let (first, mid, last) = (curve.max_at(assigned, 0), curve.max_at(assigned, 630), curve.max_at(assigned, 899));
        assert!(first < mid && mid < last);
        assert!((r1(mid) - 1_000_000.0 / 300.50524 / 2.0).abs() < 1e-3, "w(630) = ½: {}", r1(mid));
    }

    #[test]
    fn mnd_waits_out_the_cliff_then_withholds_what_adoption_does_not_cover() {
        let c = Constants::default();
        let curve = MndCurve::new(&c);
        let assigned = 100_000 * UNIT;
        // Before epoch 223 nothing, whatever the license's creation epoch.
        assert_eq!(
            mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 0 }, 222, 255, UNIT, 0),
            MndEpoch::default()
        );
        assert_eq!(
            mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 300 }, 299, 255, UNIT, 0),
            MndEpoch::default()
        );
        let max0 = curve.max_at(assigned, 0);
        assert_eq!(
            mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 0 }, 223, 255, UNIT, 0).paid,
            max0
        );
        assert_eq!(
            mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 300 }, 300, 255, UNIT, 0).paid,
            max0
        );
        // Adoption ½: half paid, half withheld.
        let half = adoption(&c, 3_750, 0);
        assert_eq!(half, UNIT / 4, "3,750 of 7,500 licenses is ½ of the licenses' half");
        let a = adoption(&c, 7_500, 0);
        let e = mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 0 }, 223, 255, a, 0);
        assert_eq!((e.paid + e.withheld, e.released), (max0, 0));
        assert_eq!(e.withheld, max0 - max0 * a / UNIT);
        // Full adoption later releases the buffer, one epoch's max at most.
        let buffer = 10 * max0;
        let e = mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 0 }, 223, 0, UNIT, buffer);
        assert_eq!((e.paid, e.released, e.withheld), (max0, max0, 0));
        assert_eq!(adoption(&c, 10_000, 6_000_000 * 1_000_000), UNIT, "capped at 1");
        // Over the whole window at full availability and adoption: exactly
        // the assignment.
        let total: u128 = (223..223 + 900)
            .map(|e| mnd_epoch(&c, &curve, &MndLicense { assigned, first_mining_epoch: 0 }, e, 255, UNIT, 0).paid)
            .sum();
        assert_eq!(total, assigned);
    }

    #[test]
    fn poai_splits_85_15_to_the_smallest_unit_and_jobs_run_30_epochs_at_least() {
        let c = Constants::default();
        assert_eq!(poai_split(&c, 100), (85, 15));
        assert_eq!(poai_split(&c, 101), (85, 16), "the rounding is burned, nothing lost");
        assert_eq!(poai_split(&c, 1), (0, 1));
        for s in [0u128, 7, 999_999_999_999_999_999, 12 * UNIT + 3] {
            let (n, b) = poai_split(&c, s);
            assert_eq!(n + b, s);
            assert_eq!(n, s * 85 / 100);
        }
        assert_eq!(job_cost(&c, 2 * UNIT, 3, 30), Ok(180 * UNIT));
        assert_eq!(job_cost(&c, UNIT, 1, 29), Err(EconomyError::TooShort(30, 29)));
        assert_eq!(job_cost(&c, u128::MAX / 2, 3, 30), Err(EconomyError::Overflow));
        assert_eq!(sale_split(&c, 1_000), (800, 200));
    }

    #[test]
    fn fractions_of_large_amounts_do_not_overflow() {
        let big = u128::MAX / 3;
        assert_eq!(times_fraction(big, UNIT), big);
        assert_eq!(times_fraction(big, 0), 0);
        assert_eq!(times_fraction(10 * UNIT + 7, UNIT / 2), 5 * UNIT + 3);
        // The largest MND at the window's peak, with a buffer as large as
        // the window: no overflow at any adoption.
        let c = Constants::default();
        let curve = MndCurve::new(&c);
        let (one, _) = c.mnd_caps();
        let lic = MndLicense { assigned: one, first_mining_epoch: 0 };
        for adoption in [1, UNIT / 3, UNIT] {
            let e = mnd_epoch(&c, &curve, &lic, c.mnd_cliff + 899, 255, adoption, one);
            assert!(e.paid <= one && e.released <= one);
        }
    }

    #[test]
    fn mnd_assignments_respect_both_caps() {
        let c = Constants::default();
        let (one, all) = c.mnd_caps();
        assert!(check_mnd_assignment(&c, one, 0).is_ok());
        assert!(matches!(check_mnd_assignment(&c, one + 1, 0), Err(EconomyError::MndLicenseCap { .. })));
        assert!(matches!(check_mnd_assignment(&c, one, all - one + 1), Err(EconomyError::MndTotalCap { .. })));
    }
}
