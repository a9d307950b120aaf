//! Lock data along the inline publish path, under load: each copy (the state's, the publish
//! slot's, the status handed to the store, the store's entry) reuses the allocation of an
//! earlier transition, and no transition may ever show another's text, a mix of two, a stale
//! tail, or go back in sequence. The texts describe themselves (`text`), so any such mix-up
//! fails `check_text`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use reactive_lock::{Backend, Entry, LocalBackend, ReactiveLock, TrackerConfig};

mod common;
use common::until;

const KEYS: [&str; 3] = ["k0", "k1", "k2"];

async fn registry(store: &LocalBackend, name: &str, renewal_ms: u64, exp_ms: u64) -> ReactiveLock {
    let mut b = ReactiveLock::builder()
        .instance_name(name)
        .renewal(Duration::from_millis(renewal_ms))
        .expiration(Duration::from_millis(exp_ms));
    for k in KEYS {
        b = b.tracker(k, TrackerConfig::new());
    }
    b.build(store.clone()).await.unwrap()
}

/// A self-describing lock data text: "<tag>|<len>|" + filler derived from tag, total chars
/// ~ len. Checkable: any mix of two texts, truncation or stale tail is detected.
fn text(tag: &str, len: usize) -> String {
    let fillers = ['a', 'é', '日', 'z', '😀', 'Q'];
    let h = tag
        .bytes()
        .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
    let c = fillers[h % fillers.len()];
    let mut s = format!("{tag}|{len}|");
    for _ in 0..len {
        s.push(c);
    }
    s
}

fn check_text(s: &str) -> Result<(), String> {
    let mut parts = s.splitn(3, '|');
    let (Some(tag), Some(len), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("malformed: {:.80}", s));
    };
    let len: usize = len.parse().map_err(|_| format!("bad len in {:.80}", s))?;
    if text(tag, len) != s {
        return Err(format!(
            "mixed/garbled data: tag {tag} len {len}, got {} chars (head {:.60})",
            rest.chars().count(),
            s
        ));
    }
    Ok(())
}

/// The entry the store holds for the writer `w` on `key`, if any.
async fn stored(store: &LocalBackend, key: &str) -> Option<Entry> {
    let snapshot = store.snapshot(key).await.unwrap();
    snapshot.entries.into_iter().find(|e| e.instance == "w")
}

/// Waits until the store holds an entry of `w` on `key` for which `check` holds, and returns
/// it; fails naming `what` after 5 s.
async fn until_stored(
    store: &LocalBackend,
    key: &str,
    what: &str,
    check: impl Fn(&Entry) -> bool,
) -> Entry {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let entry = stored(store, key).await;
        match entry {
            Some(entry) if check(&entry) => return entry,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the store holds {:?}",
            entry.map(|e| (e.busy, e.seq, e.lock_data.map(|d| d.len())))
        );
        async_io::Timer::after(Duration::from_millis(5)).await;
    }
}

fn lengths() -> Vec<usize> {
    vec![
        0, 1, 3, 16, 700, 1024, 1025, 3000, 40_000, 2, 1023, 20_000, 5,
    ]
}

/// Transitions in turn with lock data of many lengths (either side of the largest allocation
/// kept), none and empty, on several keys: each is checked in the store and in a second
/// instance right away.
#[test]
fn lock_data_of_every_length_reaches_the_store_and_the_other_instance_exactly() {
    block_on(async {
        let store = LocalBackend::new();
        let w = registry(&store, "w", 200, 5000).await;
        let r = registry(&store, "r", 200, 5000).await;
        let lens = lengths();
        for round in 0..3 {
            for (i, &len) in lens.iter().enumerate() {
                let key = KEYS[(i + round) % KEYS.len()];
                let c = w.controller(key).unwrap();
                let rs = r.state(key).unwrap();
                let data = if len == 0 {
                    String::new()
                } else {
                    text(&format!("r{round}i{i}{key}"), len)
                };
                let with = if i % 4 == 3 {
                    None
                } else {
                    Some(data.as_str())
                };
                c.increment(with).await.unwrap();
                let expected: Option<&str> = with.filter(|d| !d.is_empty());
                let e = stored(&store, key).await.expect("entry");
                assert!(e.busy, "store busy after ack");
                assert_eq!(
                    e.lock_data.as_deref(),
                    expected,
                    "store data after ack (len {len})"
                );
                let exp_vec: Vec<String> = expected.map(String::from).into_iter().collect();
                until(&rs, "remote sees exactly the data", |s| {
                    s.is_blocked() && s.lock_data_entries() == exp_vec
                })
                .await;
                assert_eq!(w.state(key).unwrap().lock_data().as_deref(), expected);
                c.decrement(1).await.unwrap();
                let e = stored(&store, key).await.expect("entry");
                assert!(!e.busy);
                assert_eq!(e.lock_data, None, "idle entry carries no data");
                until(&rs, "remote idle", |s| {
                    !s.is_blocked() && s.lock_data_entries().is_empty()
                })
                .await;
            }
        }
        w.shutdown().await;
        r.shutdown().await;
    });
}

/// Four threads transitioning on several keys at once (increment/decrement, and guards
/// dropped on other threads), with renewals running: a watcher checks that every store entry's
/// data is well-formed, that no idle entry has data and that no sequence goes back; at the
/// end every key is idle everywhere.
#[test]
fn concurrent_transitions_on_several_keys_never_garble_data_or_go_back_in_sequence() {
    let store = LocalBackend::new();
    let (w, r) = block_on(async {
        (
            registry(&store, "w", 5, 2000).await,
            registry(&store, "r", 5, 2000).await,
        )
    });
    let w = Arc::new(w);
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (store, stop, bad) = (store.clone(), stop.clone(), bad.clone());
        std::thread::spawn(move || {
            let mut last = [0u64; 3];
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (ki, k) in KEYS.iter().enumerate() {
                    if let Some(e) = block_on(stored(&store, k)) {
                        if e.seq < last[ki] {
                            bad.lock()
                                .unwrap()
                                .push(format!("{k}: seq went back {} -> {}", last[ki], e.seq));
                        }
                        last[ki] = e.seq;
                        match (&e.busy, &e.lock_data) {
                            (false, Some(d)) => bad
                                .lock()
                                .unwrap()
                                .push(format!("{k}: idle with data {:.60}", d)),
                            (true, Some(d)) => {
                                if let Err(m) = check_text(d) {
                                    bad.lock().unwrap().push(format!("{k}: {m}"));
                                }
                            }
                            _ => {}
                        }
                    }
                }
                n += 1;
            }
            n
        })
    };
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let w = w.clone();
            std::thread::spawn(move || {
                let lens = lengths();
                for i in 0..300 {
                    let key = KEYS[(t + i) % KEYS.len()];
                    let c = w.controller(key).unwrap();
                    let len = lens[(i * 7 + t) % lens.len()];
                    let d = text(&format!("t{t}i{i}"), len);
                    if i % 3 == 0 {
                        // guard dropped on another thread
                        let g = c.enter_owned(Some(&d));
                        std::thread::spawn(move || drop(g)).join().unwrap();
                    } else {
                        let _ = block_on(c.increment(if i % 5 == 0 { None } else { Some(&d) }));
                        let _ = block_on(c.decrement(1));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = watcher.join().unwrap();
    let bad = bad.lock().unwrap().clone();
    assert!(
        bad.is_empty(),
        "{} violations in {rounds} rounds, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    block_on(async {
        for k in KEYS {
            let c = w.controller(k).unwrap();
            assert_eq!(c.count(), 0);
            let e = stored(&store, k).await.unwrap();
            assert!(
                !e.busy && e.lock_data.is_none(),
                "{k}: final store entry {e:?}"
            );
            until(&r.state(k).unwrap(), "remote idle", |s| {
                !s.is_blocked() && s.lock_data_entries().is_empty()
            })
            .await;
            assert!(!w.state(k).unwrap().is_blocked());
        }
        r.shutdown().await;
    });
}

/// One instance holds a key busy (acknowledged) while another churns that key and others from
/// three threads: a third instance never answers unblocked for the key, and always lists the
/// holder's data, well-formed.
#[test]
fn a_reader_stays_blocked_with_the_holders_data_while_another_instance_churns() {
    let store = LocalBackend::new();
    let (h, w, r) = block_on(async {
        (
            registry(&store, "holder", 5, 2000).await,
            registry(&store, "churn", 5, 2000).await,
            registry(&store, "reader", 5, 2000).await,
        )
    });
    let hd = text("holder", 1500);
    block_on(h.controller("k0").unwrap().increment(Some(&hd))).unwrap();
    let rs = r.state("k0").unwrap();
    block_on(until(&rs, "reader blocked", |s| s.is_blocked()));
    let w = Arc::new(w);
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..3)
        .map(|t| {
            let (w, stop) = (w.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = KEYS[(t + i) % KEYS.len()];
                    let c = w.controller(key).unwrap();
                    let d = text(&format!("c{t}i{i}"), lengths()[i % 13]);
                    let g = c.enter(Some(&d));
                    drop(g);
                    i += 1;
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut checks = 0;
    let mut fail = None;
    while Instant::now() < deadline {
        if !rs.is_blocked() {
            fail = Some("reader unblocked".to_string());
            break;
        }
        let entries = rs.lock_data_entries();
        if !entries.contains(&hd) {
            fail = Some(format!("holder data missing: {} entries", entries.len()));
            break;
        }
        for e in &entries {
            if let Err(m) = check_text(e) {
                fail = Some(m);
            }
        }
        checks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    assert!(fail.is_none(), "after {checks} checks: {fail:?}");
    block_on(async {
        h.controller("k0").unwrap().decrement(1).await.unwrap();
        until(&rs, "reader unblocked at the end", |s| !s.is_blocked()).await;
        h.shutdown().await;
        r.shutdown().await;
    });
}

/// Transitions made during an outage: once the store is back it holds the newest status with
/// exactly its data, and after a restart that lost everything (`clear`) the renewal restores
/// that status, never an older one.
#[test]
fn after_an_outage_and_a_store_restart_the_store_holds_the_newest_data() {
    block_on(async {
        let store = LocalBackend::new();
        let w = registry(&store, "w", 20, 1000).await;
        let r = registry(&store, "r", 20, 1000).await;
        let c = w.controller("k1").unwrap();
        let rs = r.state("k1").unwrap();
        let d1 = text("first", 2000);
        c.increment(Some(&d1)).await.unwrap();
        until(&rs, "blocked d1", |s| {
            s.lock_data_entries() == vec![d1.clone()]
        })
        .await;
        store.set_available(false);
        let _ = c.decrement(1).await;
        let d2 = text("second", 10);
        let _ = c.increment(Some(&d2)).await;
        let _ = c.decrement(1).await;
        let d3 = text("third", 1100);
        let _ = c.increment(Some(&d3)).await;
        store.set_available(true);
        until_stored(&store, "k1", "the store converges to d3", |e| {
            e.busy && e.lock_data.as_deref() == Some(d3.as_str())
        })
        .await;
        until(&rs, "remote sees d3", |s| {
            s.lock_data_entries() == vec![d3.clone()]
        })
        .await;
        store.clear();
        let e = until_stored(&store, "k1", "restored after clear", |_| true).await;
        assert!(e.busy, "restored status busy");
        assert_eq!(e.lock_data.as_deref(), Some(d3.as_str()), "restored data");
        c.decrement(1).await.unwrap();
        let e = stored(&store, "k1").await.unwrap();
        assert!(!e.busy && e.lock_data.is_none());
        until(&rs, "remote idle", |s| {
            !s.is_blocked() && s.lock_data_entries().is_empty()
        })
        .await;
        w.shutdown().await;
        r.shutdown().await;
    });
}
