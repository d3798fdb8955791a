//! Skewed choices shared by the workloads: a Zipf sampler over ranks and a bijection that
//! scatters ranks over the data so the hot items are not neighbours.

use crate::content::Xoshiro256;
use crate::math;

/// Zipf(n, s) ranks in `0..n` by Gray et al.'s method ("Quickly generating billion-record
/// synthetic databases", SIGMOD 1994): O(1) per sample after an O(min(n, 10⁴)) setup.
pub(crate) struct Zipf {
    n: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow: f64,
}

impl Zipf {
    pub(crate) fn new(n: u64, s: f64) -> Self {
        // The method divides by 1 - s; nudge s = 1 to a neighbour.
        let theta = if (s - 1.0).abs() < 1e-3 { 0.999 } else { s };
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2.min(n), theta);
        let nf = n as f64;
        let eta = (1.0 - math::powf(2.0 / nf, 1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self { n: nf, alpha: 1.0 / (1.0 - theta), zetan, eta, half_pow: math::powf(0.5, theta) }
    }

    pub(crate) fn sample(&self, rng: &mut Xoshiro256) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow {
            return 1;
        }
        let r = self.n * math::powf(self.eta * u - self.eta + 1.0, self.alpha);
        (r as u64).min(self.n as u64 - 1)
    }
}

/// `Σ_{i=1..n} i^-θ`: exact up to 10⁴ terms, then the midpoint integral of the tail.
fn zeta(n: u64, theta: f64) -> f64 {
    let exact = n.min(10_000);
    let mut sum = 0.0;
    for i in 1..=exact {
        sum += math::powf(i as f64, -theta);
    }
    if n > exact {
        let f = |x: f64| math::powf(x, 1.0 - theta) / (1.0 - theta);
        sum += f(n as f64 + 0.5) - f(exact as f64 + 0.5);
    }
    sum
}

/// A fixed bijection of `0..n` that scatters ranks over the region (hot pages are not
/// neighbours, as in a real heap).
pub(crate) fn scatter(rank: u64, n: u64) -> u64 {
    // Multiplying by an odd constant coprime with n is a bijection mod n; pick one.
    let mut a = 0x9E37_79B9_7F4A_7C15 % n | 1;
    while gcd(a, n) != 1 {
        a += 2;
    }
    ((u128::from(rank) * u128::from(a)) % u128::from(n)) as u64
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
