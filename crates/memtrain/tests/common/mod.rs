//! Helpers shared by the test binaries that check custom backwards against finite
//! differences.

/// `n` values uniform in [-1, 1) from a fixed linear congruential generator: the same inputs
/// on every machine.
pub fn uniform(state: &mut u64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// Checks `analytic[j]`, the gradient of `loss` with respect to `inputs[j]`, against central
/// differences with step `eps`, element by element: `|numeric - analytic| <= atol + rtol
/// |numeric|`. `what` names the case in the failure message.
pub fn assert_matches_central_differences(
    inputs: &[Vec<f64>],
    analytic: &[Vec<f64>],
    loss: impl Fn(&[Vec<f64>]) -> f64,
    (eps, atol, rtol): (f64, f64, f64),
    what: &str,
) {
    for (which, grad) in analytic.iter().enumerate() {
        for i in 0..grad.len() {
            let mut x = inputs.to_vec();
            x[which][i] += eps;
            let up = loss(&x);
            x[which][i] -= 2.0 * eps;
            let down = loss(&x);
            let numeric = (up - down) / (2.0 * eps);
            assert!(
                (numeric - grad[i]).abs() <= atol + rtol * numeric.abs(),
                "{what}: input {which} element {i}: analytic {} numeric {numeric}",
                grad[i]
            );
        }
    }
}

/// Central differences of `loss` with respect to each element of `inputs[which]`, step `eps`
/// (for gradients that are compared with something other than one analytic value, e.g. the
/// mean of a randomized estimator).
#[allow(dead_code)] // not every test binary uses it
pub fn central_differences(
    inputs: &[Vec<f64>],
    which: usize,
    loss: impl Fn(&[Vec<f64>]) -> f64,
    eps: f64,
) -> Vec<f64> {
    (0..inputs[which].len())
        .map(|i| {
            let mut x = inputs.to_vec();
            x[which][i] += eps;
            let up = loss(&x);
            x[which][i] -= 2.0 * eps;
            (up - loss(&x)) / (2.0 * eps)
        })
        .collect()
}
