//! Stable-toolchain twin of the `controller_ops` fuzz target: random operation sequences
//! against a plain model of count, hysteresis and saturation.

use reactive_lock::TrackerController;

#[test]
fn random_sequences_match_the_model() {
    for seed in 0..2_000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let threshold = rng.usize(1..=8);
        let ctrl = TrackerController::new(threshold).unwrap();
        let (mut count, mut busy) = (0usize, false);
        let mut guards = Vec::new();
        for step in 0..rng.usize(1..200) {
            match rng.u8(0..4) {
                0 => {
                    drop(ctrl.increment(Some("d")));
                    count += 1;
                }
                1 => {
                    let n = rng.usize(0..6);
                    drop(ctrl.decrement(n));
                    count = count.saturating_sub(n);
                }
                2 => {
                    guards.push(ctrl.enter_owned(None));
                    count += 1;
                }
                _ => {
                    if guards.pop().is_some() {
                        count = count.saturating_sub(1);
                    }
                }
            }
            busy = (busy || count >= threshold) && count > 0;
            let context = format!("seed {seed}, step {step}, threshold {threshold}");
            assert_eq!(ctrl.count(), count, "{context}");
            assert_eq!(ctrl.is_busy(), busy, "{context}");
            assert_eq!(ctrl.state().is_blocked(), busy, "{context}");
        }
    }
}
