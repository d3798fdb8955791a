//! `ln`, `exp` and `powf` for the guest (`core` has no floating-point library functions).
//! Accurate to about 1e-12 relative, which is plenty for drawing workload samples.

const LN2: f64 = core::f64::consts::LN_2;

/// Natural logarithm of `x > 0`.
pub fn ln(x: f64) -> f64 {
    if x <= 0.0 {
        return f64::NEG_INFINITY;
    }
    let bits = x.to_bits();
    let mut exp = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52)); // [1, 2)
    if m > core::f64::consts::SQRT_2 {
        m /= 2.0;
        exp += 1;
    }
    // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = 0.0;
    let mut k = 1.0;
    while k < 24.0 {
        sum += term / k;
        term *= s2;
        k += 2.0;
    }
    2.0 * sum + exp as f64 * LN2
}

/// `e^x`.
pub fn exp(x: f64) -> f64 {
    if x > 709.0 {
        return f64::INFINITY;
    }
    if x < -708.0 {
        return 0.0;
    }
    let k = (x / LN2 + if x < 0.0 { -0.5 } else { 0.5 }) as i64;
    let r = x - k as f64 * LN2; // |r| <= ln2/2
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut i = 1.0;
    while i < 18.0 {
        term *= r / i;
        sum += term;
        i += 1.0;
    }
    sum * f64::from_bits(((k + 1023) as u64) << 52)
}

/// `x^y` for `x > 0`.
pub fn powf(x: f64, y: f64) -> f64 {
    exp(y * ln(x))
}
