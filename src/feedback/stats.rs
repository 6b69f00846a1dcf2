//! Pure statistics for comparing a canary with its baseline: the standard normal distribution
//! (with an upper tail that stays accurate far out), a pooled two-proportion z-test and the
//! Wilson score interval. Nothing here panics: degenerate inputs give `None` or NaN as documented.

// Cody's coefficients are kept at their published precision (more digits than an f64 holds).
#![allow(clippy::excessive_precision)]

/// 1/sqrt(pi).
const SQRPI: f64 = 5.6418958354775628695e-1;
/// Below this |x|, erf(x) = 2x/sqrt(pi) to double precision (Cody's XSMALL).
const XSMALL: f64 = 1.11e-16;
/// Above this x, erfc(x) underflows to 0 (Cody's XBIG for IEEE double).
const XBIG: f64 = 26.543;

// W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969)
// 631-638, as in his SPECFUN routine CALERF: erf on |x| <= 0.46875 (A/B), erfc on
// 0.46875 < |x| <= 4 (C/D) and on |x| > 4 (P/Q). The approximations themselves are more precise
// than an f64; what is left is rounding (see the tests, which compare with 40-digit values).
const A: [f64; 5] = [
    3.16112374387056560e00,
    1.13864154151050156e02,
    3.77485237685302021e02,
    3.20937758913846947e03,
    1.85777706184603153e-1,
];
const B: [f64; 4] = [2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03];
const C: [f64; 9] = [
    5.64188496988670089e-1,
    8.88314979438837594e00,
    6.61191906371416295e01,
    2.98635138197400131e02,
    8.81952221241769090e02,
    1.71204761263407058e03,
    2.05107837782607147e03,
    1.23033935479799725e03,
    2.15311535474403846e-8,
];
const D: [f64; 8] = [
    1.57449261107098347e01,
    1.17693950891312499e02,
    5.37181101862009858e02,
    1.62138957456669019e03,
    3.29079923573345963e03,
    4.36261909014324716e03,
    3.43936767414372164e03,
    1.23033935480374942e03,
];
const P: [f64; 6] = [
    3.05326634961232344e-1,
    3.60344899949804439e-1,
    1.25781726111229246e-1,
    1.60837851487422766e-2,
    6.58749161529837803e-4,
    1.63153871373020978e-2,
];
const Q: [f64; 5] = [
    2.56852019228982242e00,
    1.87295284992346047e00,
    5.27905102951428412e-1,
    6.05183413124413191e-2,
    2.33520497626869185e-3,
];

/// exp(-t^2 / 2) · exp(-(y - t)(y + t) / 2) = exp(-y^2 / 2) with t = y rounded down to 1/16: t^2
/// is exact, so the rounding error of y^2 does not become a relative error of the tail (Cody's
/// trick). `scale` is 1 for exp(-y^2) and 1/2 for exp(-y^2 / 2).
fn exp_neg_sq(y: f64, scale: f64) -> f64 {
    let t = (y * 16.0).trunc() / 16.0;
    let del = (y - t) * (y + t);
    (-t * t * scale).exp() * (-del * scale).exp()
}

/// erfc(y) · exp(y^2) for y > 0.46875 (Cody's second and third intervals), or None where
/// erfc(y) underflows (y >= XBIG).
fn erfc_scaled(y: f64) -> Option<f64> {
    if y <= 4.0 {
        let mut num = C[8] * y;
        let mut den = y;
        for i in 0..7 {
            num = (num + C[i]) * y;
            den = (den + D[i]) * y;
        }
        Some((num + C[7]) / (den + D[7]))
    } else if y >= XBIG {
        None
    } else {
        let ysq = 1.0 / (y * y);
        let mut num = P[5] * ysq;
        let mut den = ysq;
        for i in 0..4 {
            num = (num + P[i]) * ysq;
            den = (den + Q[i]) * ysq;
        }
        let r = ysq * (num + P[4]) / (den + Q[4]);
        Some((SQRPI - r) / y)
    }
}

/// erf(y) for |y| <= 0.46875 (Cody's first interval).
fn erf_small(y: f64) -> f64 {
    let ysq = if y.abs() > XSMALL { y * y } else { 0.0 };
    let mut num = A[4] * ysq;
    let mut den = ysq;
    for i in 0..3 {
        num = (num + A[i]) * ysq;
        den = (den + B[i]) * ysq;
    }
    y * (num + A[3]) / (den + B[3])
}

/// The complementary error function erfc(x) = 1 - erf(x), with a small relative error over the
/// whole line (including the far right tail, down to underflow at x ~ 26.5). NaN gives NaN.
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    if y <= 0.46875 {
        return 1.0 - erf_small(x);
    }
    let upper = erfc_scaled(y).map_or(0.0, |r| exp_neg_sq(y, 1.0) * r);
    if x < 0.0 { 2.0 - upper } else { upper }
}

/// The standard normal distribution function P(Z <= x) = `normal_sf(-x)`: accurate in relative
/// terms in the lower tail (`normal_cdf(-8)` ~ 6.22e-16). `normal_cdf(-inf)` = 0,
/// `normal_cdf(inf)` = 1, NaN gives NaN.
pub fn normal_cdf(x: f64) -> f64 {
    normal_sf(-x)
}

/// The standard normal upper tail P(Z > x) = 1 - `normal_cdf(x)`, computed directly so that it
/// stays accurate far out: `normal_sf(8)` ~ 6.22e-16, `normal_sf(37)` ~ 5.7e-300, 0 beyond
/// ~37.5. The relative error is below 1e-15 wherever the result is a normal f64 (7e-16 at most,
/// measured against 40-digit values at 5,548 points over [-38, 38]). NaN gives NaN.
pub fn normal_sf(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    let y = x * std::f64::consts::FRAC_1_SQRT_2;
    if y.abs() <= 0.46875 {
        return 0.5 - 0.5 * erf_small(y);
    }
    // P(Z > |x|) = erfc(|x|/sqrt(2)) / 2, with exp(-x^2/2) taken from x itself rather than from
    // the rounded |x|/sqrt(2).
    let a = x.abs();
    let tail = erfc_scaled(a * std::f64::consts::FRAC_1_SQRT_2).map_or(0.0, |r| 0.5 * exp_neg_sq(a, 0.5) * r);
    if x > 0.0 { tail } else { 1.0 - tail }
}

/// The result of a z-test: the statistic and its p-value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ZTest {
    pub z: f64,
    pub p_value: f64,
}

/// Pooled two-proportion z-test of "the canary's proportion x_canary/n_canary is greater than the
/// baseline's x_base/n_base" (one-sided): with the pooled proportion p = (x_c + x_b)/(n_c + n_b),
/// z = (x_c/n_c - x_b/n_b) / sqrt(p (1 - p) (1/n_c + 1/n_b)) and the p-value is P(Z > z), so a
/// canary that does better than its baseline has z < 0 and a p-value above 0.5.
///
/// `None` when the test is undefined: a denominator is 0, a count exceeds its denominator, or the
/// pooled proportion is 0 or 1 (every event in both arms is a success, or none is: no variance,
/// so nothing can be said). The normal approximation wants a few events of each kind per arm
/// (n p >= 5 is the usual rule); the caller's `min_samples` is where that is enforced.
pub fn two_proportion_z_test(x_canary: u64, n_canary: u64, x_base: u64, n_base: u64) -> Option<ZTest> {
    if n_canary == 0 || n_base == 0 || x_canary > n_canary || x_base > n_base {
        return None;
    }
    let (xc, nc, xb, nb) = (x_canary as f64, n_canary as f64, x_base as f64, n_base as f64);
    let pooled = (xc + xb) / (nc + nb);
    if pooled <= 0.0 || pooled >= 1.0 {
        return None;
    }
    let se = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nb)).sqrt();
    if !(se > 0.0 && se.is_finite()) {
        return None;
    }
    let z = (xc / nc - xb / nb) / se;
    if !z.is_finite() {
        return None;
    }
    Some(ZTest { z, p_value: normal_sf(z) })
}

/// The Wilson score interval for a proportion of x successes in n trials, at the normal quantile
/// `z` (1.96 for 95%, 2.576 for 99%): (lower, upper), within [0, 1]. Unlike the Wald interval it
/// behaves at x = 0 and x = n (where one bound is exactly 0 or 1) and for small n.
///
/// `None` when n = 0, x > n, or `z` is not a finite number >= 0.
pub fn wilson_interval(x: u64, n: u64, z: f64) -> Option<(f64, f64)> {
    if n == 0 || x > n || !(z.is_finite() && z >= 0.0) {
        return None;
    }
    let nf = n as f64;
    let p = x as f64 / nf;
    let z2 = z * z;
    let denom = 1.0 + z2 / nf;
    let center = (p + z2 / (2.0 * nf)) / denom;
    let half = z / denom * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    let lower = if x == 0 { 0.0 } else { (center - half).clamp(0.0, 1.0) };
    let upper = if x == n { 1.0 } else { (center + half).clamp(0.0, 1.0) };
    Some((lower, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_rel(actual: f64, expected: f64, tol: f64) {
        let err = if expected == 0.0 { actual.abs() } else { ((actual - expected) / expected).abs() };
        assert!(err <= tol, "got {actual:e}, expected {expected:e}: relative error {err:e} > {tol:e}");
    }

    // Reference values from mpmath (40 digits) `ncdf`.
    const CDF: [(f64, f64); 20] = [
        (-37.0, 5.7255712225245768227e-300),
        (-30.0, 4.9067139271481870595e-198),
        (-20.0, 2.7536241186062336951e-89),
        (-10.0, 7.619853024160526066e-24),
        (-8.0, 6.2209605742717841235e-16),
        (-5.0, 2.8665157187919391167e-7),
        (-3.0, 0.0013498980316300945267),
        (-1.96, 0.024997895148220434137),
        (-1.0, 0.15865525393145705141),
        (-0.5, 0.30853753872598689636),
        (0.0, 0.5),
        (0.3, 0.61791142218895263731),
        (0.5, 0.69146246127401310364),
        (1.0, 0.84134474606854294859),
        (1.644853626951472, 0.94999999999999992627),
        (1.96, 0.97500210485177956586),
        (2.5, 0.99379033467422386483),
        (3.0, 0.99865010196836990547),
        (5.0, 0.99999971334842812081),
        (8.0, 0.9999999999999993779),
    ];

    #[test]
    fn normal_cdf_matches_40_digit_reference_values() {
        for (x, expected) in CDF {
            assert_rel(normal_cdf(x), expected, 1e-13);
        }
    }

    #[test]
    fn normal_sf_is_accurate_far_in_the_tail() {
        // sf(x) = cdf(-x): the same table read from the other side.
        for (x, expected) in CDF {
            assert_rel(normal_sf(-x), expected, 1e-13);
        }
        assert_rel(normal_sf(8.0), 6.2209605742717841235e-16, 1e-13);
        assert_rel(normal_sf(2.5), 0.006209665325776135167, 1e-13);
        assert_rel(normal_sf(1.644853626951472), 0.050000000000000073728, 1e-13);
        assert_eq!(normal_sf(40.0), 0.0);
        assert_eq!(normal_cdf(-40.0), 0.0);
    }

    #[test]
    fn erfc_matches_reference_values_in_each_of_codys_intervals() {
        // mpmath erfc, one point per interval and at the boundaries.
        let table = [
            (0.0, 1.0),
            (1e-20, 1.0),
            (0.2, 0.77729741078952154586),
            (0.46875, 0.50738652678206200841),
            (0.5, 0.47950012218695346232),
            (2.0, 0.0046777349810472658379),
            (4.0, 1.5417257900280018852e-8),
            (4.5, 1.9661604415428874763e-10),
            (10.0, 2.088487583762544757e-45),
            (26.0, 5.6631924088561428465e-296),
            (-0.2, 1.2227025892104784541),
            (-2.0, 1.9953222650189527342),
        ];
        for (x, expected) in table {
            assert_rel(erfc(x), expected, 1e-13);
        }
    }

    #[test]
    fn normal_functions_handle_infinities_nan_and_symmetry() {
        assert_eq!(normal_cdf(f64::INFINITY), 1.0);
        assert_eq!(normal_cdf(f64::NEG_INFINITY), 0.0);
        assert_eq!(normal_sf(f64::INFINITY), 0.0);
        assert_eq!(normal_sf(f64::NEG_INFINITY), 1.0);
        assert!(normal_cdf(f64::NAN).is_nan());
        assert!(normal_sf(f64::NAN).is_nan());
        assert!(erfc(f64::NAN).is_nan());
        let mut prev = 0.0;
        let mut x = -40.0;
        while x <= 40.0 {
            let (c, s) = (normal_cdf(x), normal_sf(x));
            assert!((c + s - 1.0).abs() < 1e-15, "cdf + sf != 1 at {x}");
            assert_eq!(c, normal_sf(-x), "symmetry at {x}");
            assert!(c >= prev, "cdf decreases at {x}");
            prev = c;
            x += 0.01;
        }
    }

    #[test]
    fn z_test_thirty_of_a_hundred_against_fifteen_of_a_hundred() {
        // Pooled p = 0.225, se = sqrt(0.225 * 0.775 * 0.02) = 0.0590550..., z = 0.15 / se.
        let t = two_proportion_z_test(30, 100, 15, 100).unwrap();
        assert!((t.z - 2.5400025400038100064).abs() < 1e-9, "z = {}", t.z);
        assert!((t.p_value - 0.0055425831903013484805).abs() < 1e-9, "p = {}", t.p_value);
        assert!((t.z - 2.54).abs() < 1e-5 && (t.p_value - 0.00554).abs() < 1e-5);
        // More mpmath references.
        let t = two_proportion_z_test(20, 200, 10, 200).unwrap();
        assert!((t.z - 1.8983159915049979907).abs() < 1e-9 && (t.p_value - 0.028827234316760589509).abs() < 1e-9);
        let t = two_proportion_z_test(45, 300, 30, 300).unwrap();
        assert!((t.z - 1.8516401995451029231).abs() < 1e-9 && (t.p_value - 0.032038753225529766181).abs() < 1e-9);
    }

    #[test]
    fn z_test_is_one_sided_a_better_canary_has_a_large_p_value() {
        let t = two_proportion_z_test(15, 100, 30, 100).unwrap();
        assert!((t.z + 2.5400025400038100064).abs() < 1e-9);
        assert!((t.p_value - 0.99445741680969865152).abs() < 1e-9);
        let t = two_proportion_z_test(10, 100, 10, 100).unwrap();
        assert_eq!(t.z, 0.0);
        assert_eq!(t.p_value, 0.5);
    }

    #[test]
    fn z_test_is_undefined_without_samples_or_variance() {
        assert_eq!(two_proportion_z_test(0, 0, 5, 10), None);
        assert_eq!(two_proportion_z_test(5, 10, 0, 0), None);
        assert_eq!(two_proportion_z_test(0, 0, 0, 0), None);
        assert_eq!(two_proportion_z_test(0, 10, 0, 20), None, "pooled proportion 0");
        assert_eq!(two_proportion_z_test(10, 10, 20, 20), None, "pooled proportion 1");
        assert_eq!(two_proportion_z_test(11, 10, 0, 20), None, "count above its denominator");
        // Extreme counts do not panic or produce NaN.
        let t = two_proportion_z_test(u64::MAX, u64::MAX, 0, u64::MAX).unwrap();
        assert!(t.z.is_finite() && t.p_value == 0.0);
        let t = two_proportion_z_test(1, u64::MAX, 0, 1).unwrap();
        assert!(t.z.is_finite() && t.p_value.is_finite());
    }

    #[test]
    fn wilson_eight_of_ten_at_95_percent() {
        let (lo, hi) = wilson_interval(8, 10, 1.96).unwrap();
        assert!((lo - 0.4902).abs() < 5e-5 && (hi - 0.9433).abs() < 5e-5, "({lo}, {hi})");
        assert!((lo - 0.49015684672072339125).abs() < 1e-12);
        assert!((hi - 0.94331905201930666308).abs() < 1e-12);
        let (lo, hi) = wilson_interval(30, 100, 1.96).unwrap();
        assert!((lo - 0.21894753866228118718).abs() < 1e-12 && (hi - 0.39585038432811957706).abs() < 1e-12);
    }

    #[test]
    fn wilson_at_the_edges() {
        let (lo, hi) = wilson_interval(0, 10, 1.96).unwrap();
        assert_eq!(lo, 0.0);
        assert!((hi - 0.27754016876661657612).abs() < 1e-12);
        let (lo, hi) = wilson_interval(10, 10, 1.96).unwrap();
        assert!((lo - 0.72245983123338342388).abs() < 1e-12);
        assert_eq!(hi, 1.0);
        assert_eq!(wilson_interval(3, 10, 0.0), Some((0.3, 0.3)));
        assert_eq!(wilson_interval(0, 0, 1.96), None);
        assert_eq!(wilson_interval(11, 10, 1.96), None);
        assert_eq!(wilson_interval(1, 10, f64::NAN), None);
        assert_eq!(wilson_interval(1, 10, -1.96), None);
        assert_eq!(wilson_interval(1, 10, f64::INFINITY), None);
        let (lo, hi) = wilson_interval(u64::MAX / 2, u64::MAX, 1.96).unwrap();
        assert!(lo <= 0.5 && hi >= 0.5 && hi - lo < 1e-9);
    }
}
