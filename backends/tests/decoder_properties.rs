//! Stable twins of the fuzz targets in `fuzz/`: the same harnesses and invariants
//! (`tests/decoders/`), run on the committed seed corpora (`fuzz/corpus/<target>/`) and on
//! deterministic mutations of them, so every `cargo test` checks what the fuzzers check
//! without a nightly toolchain or a sanitizer build.

#[path = "decoders/grpc_notifications.rs"]
mod grpc_notifications;
#[path = "decoders/hub_ops.rs"]
mod hub_ops;
#[path = "decoders/redis_snapshot.rs"]
mod redis_snapshot;
#[path = "decoders/redis_wire.rs"]
mod redis_wire;

/// The committed seeds of `target`; at least one, so a missing corpus fails the test
/// instead of checking nothing.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

/// Bytes the decoders branch on: flags, separators, digits, and what is not UTF-8.
const INTERESTING: &[u8] = b"01589;\n\t-+ \x00\x7f\x80\xff";

/// Integers at the edges of what the inputs carry (ticks, seconds, lengths, nanos).
const EDGES: &[u64] = &[
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    999_999_999,
    1_000_000_000,
    621_355_968_000_000_000,
    i64::MAX as u64,
    i64::MIN as u64,
    u64::MAX,
];

/// A libFuzzer-like mutation of `seed`, some of it spliced from `other`.
fn mutate(rng: &mut fastrand::Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..rng.usize(1..=6) {
        let at = rng.usize(..=out.len());
        match rng.u8(..8) {
            0 if at < out.len() => out[at] ^= 1 << rng.u8(..8),
            1 if at < out.len() => out[at] = INTERESTING[rng.usize(..INTERESTING.len())],
            2 => out.insert(at, INTERESTING[rng.usize(..INTERESTING.len())]),
            3 if at < out.len() => drop(out.remove(at)),
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.usize(..other.len());
                let to = rng.usize(from..=other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            6 => {
                let edge = EDGES[rng.usize(..EDGES.len())];
                let bytes = if rng.bool() {
                    edge.to_be_bytes()
                } else {
                    edge.to_le_bytes()
                };
                let end = (at + 8).min(out.len());
                out.splice(at..end, bytes);
            }
            _ => {
                let edge = EDGES[rng.usize(..EDGES.len())].to_string();
                let end = (at + rng.usize(..=20)).min(out.len());
                out.splice(at..end, edge.into_bytes());
            }
        }
    }
    out
}

/// Runs `check` on every seed, then on `mutations` mutated seeds and random inputs.
fn run(target: &str, check: fn(&[u8]), mutations: usize) {
    let seeds = seeds(target);
    for seed in &seeds {
        check(seed);
    }
    // Fixed per target, so a failure reproduces; the failing input is printed.
    let mut rng = fastrand::Rng::with_seed(target.bytes().map(u64::from).sum());
    for _ in 0..mutations {
        let input = if rng.u8(..10) == 0 {
            let len = rng.usize(..256);
            std::iter::repeat_with(|| rng.u8(..)).take(len).collect()
        } else {
            let seed = &seeds[rng.usize(..seeds.len())];
            let other = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, seed, other)
        };
        if let Err(panic) = std::panic::catch_unwind(|| check(&input)) {
            eprintln!("{target} failed on {input:?}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn redis_values_and_notifications_decode_to_one_meaning_or_an_error() {
    run("redis_wire", redis_wire::check, 20_000);
}

#[test]
fn redis_snapshot_is_blocked_exactly_when_a_well_formed_busy_entry_is_unexpired() {
    run("redis_snapshot", redis_snapshot::check, 20_000);
}

#[test]
fn grpc_client_snapshot_follows_each_instances_newest_status() {
    run("grpc_notifications", grpc_notifications::check, 20_000);
}

#[test]
fn hub_never_reports_idle_an_instance_busy_for_minutes() {
    run("hub_ops", hub_ops::check, 2_000);
}
