//! Zipf-distributed access: a few pages are very hot, most are cold.
//!
//! [`ZipfSampler`] draws ranks `1..=n` with `P(k) ∝ k^-s` by rejection-inversion
//! (W. Hörmann, G. Derflinger, "Rejection-inversion to generate variates from monotone
//! discrete distributions", ACM TOMACS 6(3), 1996), following the formulation of Apache
//! Commons RNG. It needs O(1) memory and expected O(1) time per sample for any `n` and any
//! `s > 0`, including `s = 1`, where the closed forms have a removable singularity that the
//! `helper1`/`helper2` functions handle with series expansions.
//!
//! [`ZipfPattern`] maps rank → page through a fixed pseudo-random permutation, so hot pages are
//! scattered over the thread's range as in a real heap.

use crate::pattern::{Access, AccessPattern};
use crate::rng::{Xoshiro256, mix64, permutation};

/// Sampler of Zipf(`n`, `s`) ranks in `1..=n`.
#[derive(Debug, Clone)]
pub struct ZipfSampler {
    n: u64,
    s: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s_threshold: f64,
}

impl ZipfSampler {
    /// A sampler over `n ≥ 1` ranks with exponent `s > 0`.
    ///
    /// # Panics
    /// If `n == 0` or `s` is not finite and positive (validate the config first).
    pub fn new(n: u64, s: f64) -> Self {
        assert!(n >= 1, "zipf over zero items");
        assert!(s.is_finite() && s > 0.0, "zipf skew {s} must be > 0");
        let mut z = Self { n, s, h_integral_x1: 0.0, h_integral_n: 0.0, s_threshold: 0.0 };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s_threshold = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// Number of ranks.
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The exponent.
    pub fn skew(&self) -> f64 {
        self.s
    }

    /// Draws a rank in `1..=n` (1 is the most popular).
    #[inline]
    pub fn sample(&self, rng: &mut Xoshiro256) -> u64 {
        loop {
            let u = self.h_integral_n + rng.next_f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.s_threshold || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    /// `h(x) = x^-s`.
    #[inline]
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// `H(x) = ∫ h = (x^(1-s) - 1) / (1 - s)` (or `ln x` for `s = 1`).
    #[inline]
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.s) * log_x) * log_x
    }

    /// Inverse of [`h_integral`](Self::h_integral).
    #[inline]
    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1 + x) / x`, continuous at 0.
#[inline]
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.ln_1p() / x } else { 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x)) }
}

/// `(e^x - 1) / x`, continuous at 0.
#[inline]
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 { x.exp_m1() / x } else { 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x)) }
}

/// Zipf-distributed pages: rank `k` (1 = hottest) maps to page `perm[k - 1]`.
#[derive(Debug)]
pub struct ZipfPattern {
    sampler: ZipfSampler,
    perm: Vec<u32>,
    rng: Xoshiro256,
    remaining: u64,
    total: u64,
}

impl ZipfPattern {
    /// `accesses` Zipf(`skew`) accesses over `0..pages`.
    pub fn new(pages: usize, skew: f64, accesses: u64, seed: u64) -> Self {
        Self {
            sampler: ZipfSampler::new(pages as u64, skew),
            perm: permutation(pages, mix64(seed ^ 0x7065_726d)),
            rng: Xoshiro256::new(seed),
            remaining: accesses,
            total: accesses,
        }
    }

    /// The page of popularity rank `rank` (1 = hottest).
    pub fn page_of_rank(&self, rank: u64) -> usize {
        self.perm[(rank - 1) as usize] as usize
    }
}

impl AccessPattern for ZipfPattern {
    fn total(&self) -> u64 {
        self.total
    }

    fn next_access(&mut self) -> Option<Access> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let rank = self.sampler.sample(&mut self.rng);
        Some(Access { page: self.page_of_rank(rank), phase: 0, write: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn histogram(n: u64, s: f64, samples: usize, seed: u64) -> Vec<u64> {
        let z = ZipfSampler::new(n, s);
        let mut rng = Xoshiro256::new(seed);
        let mut counts = vec![0u64; n as usize + 1];
        for _ in 0..samples {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        counts
    }

    fn pmf(n: u64, s: f64) -> Vec<f64> {
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-s)).collect();
        let sum: f64 = weights.iter().sum();
        weights.into_iter().map(|w| w / sum).collect()
    }

    #[test]
    fn rank_ratio_matches_two_to_the_s() {
        for s in [0.5, 0.99, 1.0, 1.2, 2.0] {
            let counts = histogram(100_000, s, 2_000_000, 11);
            let ratio = counts[1] as f64 / counts[2] as f64;
            let want = 2f64.powf(s);
            assert!((ratio / want - 1.0).abs() < 0.05, "s={s}: rank1/rank2 = {ratio}, want {want}");
        }
    }

    #[test]
    fn chi_square_against_exact_pmf() {
        // 100 ranks; bins with expected count < 5 are merged into the tail bin.
        for s in [0.3, 0.99, 1.0, 1.0 + 1e-10, 1.5] {
            let n = 100;
            let samples = 500_000;
            let counts = histogram(n, s, samples, 3);
            let p = pmf(n, s);
            let mut chi2 = 0.0;
            let mut dof = 0;
            for k in 1..=n as usize {
                let expected = p[k - 1] * samples as f64;
                let diff = counts[k] as f64 - expected;
                chi2 += diff * diff / expected;
                dof += 1;
            }
            dof -= 1;
            // Mean dof, sd sqrt(2·dof) ≈ 14; allow ~5 sd.
            let limit = dof as f64 + 5.0 * (2.0 * dof as f64).sqrt();
            assert!(chi2 < limit, "s={s}: chi2 {chi2} over {dof} dof (limit {limit})");
        }
    }

    #[test]
    fn skew_one_is_handled() {
        // Near and at s = 1 the closed forms divide by (1 - s); the result must be finite and
        // the distribution continuous across s = 1.
        let a = histogram(1000, 1.0 - 1e-9, 200_000, 9);
        let b = histogram(1000, 1.0, 200_000, 9);
        let c = histogram(1000, 1.0 + 1e-9, 200_000, 9);
        for k in [1, 2, 10] {
            let (a, b, c) = (a[k] as f64, b[k] as f64, c[k] as f64);
            assert!((a / b - 1.0).abs() < 0.05 && (c / b - 1.0).abs() < 0.05);
        }
    }

    #[test]
    fn large_population() {
        let z = ZipfSampler::new(10_000_000, 0.99);
        let mut rng = Xoshiro256::new(1);
        let mut top = 0u64;
        for _ in 0..200_000 {
            let k = z.sample(&mut rng);
            assert!((1..=10_000_000).contains(&k));
            top += u64::from(k == 1);
        }
        let want = pmf_first(10_000_000, 0.99) * 200_000.0;
        assert!((top as f64 / want - 1.0).abs() < 0.1, "{top} vs {want}");
    }

    fn pmf_first(n: u64, s: f64) -> f64 {
        1.0 / (1..=n).map(|k| (k as f64).powf(-s)).sum::<f64>()
    }

    #[test]
    fn pattern_scatters_hot_pages() {
        let p = ZipfPattern::new(1000, 0.99, 0, 4);
        let hot: Vec<usize> = (1..=10).map(|r| p.page_of_rank(r)).collect();
        // The ten hottest pages are not simply the first ten.
        assert!(hot.iter().any(|&pg| pg >= 100), "{hot:?}");
    }

    proptest! {
        #[test]
        fn samples_stay_in_range(n in 1u64..5000, s in 0.01f64..4.0, seed: u64) {
            let z = ZipfSampler::new(n, s);
            let mut rng = Xoshiro256::new(seed);
            for _ in 0..200 {
                let k = z.sample(&mut rng);
                prop_assert!((1..=n).contains(&k));
            }
        }
    }
}
