//! Arbitrary sequences of controller and state operations against a plain model: the
//! packed word, hysteresis, saturation and the local state must always agree with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reactive_lock::TrackerController;

fuzz_target!(|data: &[u8]| {
    let Some((&threshold, ops)) = data.split_first() else {
        return;
    };
    let threshold = usize::from(threshold % 8) + 1;
    let ctrl = TrackerController::new(threshold).expect("threshold in 1..=8 is valid");
    let (mut count, mut busy) = (0usize, false);
    let mut guards = Vec::new();
    for &op in ops {
        match op % 4 {
            0 => drop(ctrl.increment(Some("d"))),
            1 => drop(ctrl.decrement(usize::from(op >> 2))),
            2 => guards.push(ctrl.enter_owned(None)),
            _ => {
                if guards.pop().is_none() {
                    continue;
                }
            }
        }
        match op % 4 {
            0 | 2 => count += 1,
            1 => count = count.saturating_sub(usize::from(op >> 2)),
            _ => count = count.saturating_sub(1),
        }
        if count >= threshold {
            busy = true;
        }
        if count == 0 {
            busy = false;
        }
        assert_eq!(ctrl.count(), count);
        assert_eq!(ctrl.is_busy(), busy);
        assert_eq!(ctrl.state().is_blocked(), busy);
    }
});
