//! Instruction counts of the hot path, for callgrind: the same binary, inputs and
//! environment give the same count whatever else the machine runs, so two builds compare
//! exactly where a timed A/B on a busy 2-core VM does not.
//!
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/instructions
//! transition_pair_local 20000` prints nothing of its own; run it with two counts and
//! divide the difference of the totals by the difference of the counts to get instructions
//! per iteration (`benches/instructions.sh` does that for every workload).
//!
//! Workloads (the `hot_path` bench IDs): `transition_pair_local` (a guard's enter and drop
//! at threshold 1 on a LocalBackend registry: a busy and an idle transition, published
//! inline), `transition_pair_local_with_data` (likewise, with lock data),
//! `guard_enter_drop` (at threshold 2 with one held: no transition),
//! `increment_decrement` (likewise, through `increment`/`decrement`).

use futures_lite::future::block_on;
use reactive_lock::{LocalBackend, ReactiveLock, TrackerConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_default();
    let iterations: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(10_000);
    let threshold = if workload.starts_with("transition_pair_local") {
        1
    } else {
        2
    };
    let lock = block_on(
        ReactiveLock::builder()
            .instance_name("instructions")
            .tracker("k", TrackerConfig::new().busy_threshold(threshold))
            .build(LocalBackend::new()),
    )
    .expect("build");
    let ctrl = lock.controller("k").expect("tracker");
    let _held = (threshold == 2).then(|| ctrl.enter(None));
    match workload.as_str() {
        "transition_pair_local" | "guard_enter_drop" => {
            for _ in 0..iterations {
                drop(std::hint::black_box(ctrl.enter(None)));
            }
        }
        "transition_pair_local_with_data" => {
            for _ in 0..iterations {
                drop(std::hint::black_box(ctrl.enter(Some("payment-7f3a91c2"))));
            }
        }
        "increment_decrement" => block_on(async {
            for _ in 0..iterations {
                ctrl.increment(None).await.expect("increment");
                ctrl.decrement(1).await.expect("decrement");
            }
        }),
        other => {
            eprintln!("instructions: unknown workload `{other}`");
            std::process::exit(2);
        }
    }
    drop(_held);
    block_on(lock.shutdown());
}
