//! A key's snapshot built from an arbitrary `HGETALL` reply, as a Redis read builds it.
//! Invariant: the key is blocked exactly when some well-formed entry is busy and unexpired
//! on the store's clock (`TIME`); malformed entries are left out and counted, never a
//! panic, and never hide the well-formed ones.
//!
//! Input, so seeds stay readable: the first line is `TIME` (`{seconds} {microseconds}`);
//! each further line is an entry, `{field}\t{value}`, or a sequence, `seq\t{field}\t{seq}`.
//! Bytes need not be UTF-8.
use reactive_lock_backends::redis::fuzzing::{MAX_VALUE_LEN, snapshot_from_reply};

/// .NET ticks at the Unix epoch.
const DOTNET_TICKS_AT_UNIX_EPOCH: u64 = 621_355_968_000_000_000;

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let mut lines = data.split(|&b| b == b'\n');
    let time = lines.next().unwrap_or_default();
    let mut time = time.split(|&b| b == b' ').map(|n| {
        std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    });
    let time = (time.next().unwrap_or(0), time.next().unwrap_or(0));
    let (mut entries, mut seqs) = (Vec::new(), Vec::new());
    for line in lines {
        let mut fields = line.splitn(3, |&b| b == b'\t');
        match (fields.next(), fields.next(), fields.next()) {
            (Some(b"seq"), Some(field), Some(seq)) => seqs.push((
                String::from_utf8_lossy(field).into_owned(),
                String::from_utf8_lossy(seq).into_owned(),
            )),
            (Some(field), Some(value), rest) => {
                let mut value = value.to_vec();
                if let Some(rest) = rest {
                    value.push(b'\t');
                    value.extend_from_slice(rest);
                }
                entries.push((field.to_vec(), value));
            }
            _ => {}
        }
    }
    let now = u128::from(time.0) * 1_000_000_000 + u128::from(time.1) * 1_000;
    let now = u64::try_from(now).unwrap_or(u64::MAX);
    let judged: Vec<Option<(bool, Option<&str>)>> = entries
        .iter()
        .map(|(field, value)| busy_and_unexpired(field, value, now))
        .collect();

    let (snapshot, malformed) =
        snapshot_from_reply("payments", entries.clone(), seqs.clone(), time);

    assert_eq!(snapshot.key, "payments");
    assert_eq!(snapshot.store_now.as_unix_nanos(), now);
    let well_formed = judged.iter().filter(|j| j.is_some()).count();
    assert_eq!(snapshot.entries.len(), well_formed, "{entries:?}");
    assert_eq!(malformed, entries.len() - well_formed);
    let blocked = judged.iter().any(|j| matches!(j, Some((true, _))));
    assert_eq!(snapshot.is_blocked(), blocked, "{entries:?} at {now}");
    assert_eq!(snapshot.next_expiry().is_some(), blocked);
    if let Some(expiry) = snapshot.next_expiry() {
        assert!(!expiry.is_zero(), "an entry expiring now is expired");
    }
    // Lock data of the busy entries, each split on the .NET separator as a .NET reader
    // splits the joined data: a writer's data holding the separator reads as two entries.
    let mut expected: Vec<&str> = judged
        .iter()
        .flatten()
        .filter(|(busy, _)| *busy)
        .filter_map(|(_, data)| *data)
        .flat_map(|data| data.split("#REACTIVELOCK#"))
        .filter(|part| !part.is_empty())
        .collect();
    let mut lock_data = snapshot.lock_data_entries();
    expected.sort_unstable();
    lock_data.sort_unstable();
    assert_eq!(lock_data, expected, "{entries:?} at {now}");
    // Each entry carries the first sequence stored for its instance, 0 when none parses.
    for entry in &snapshot.entries {
        let seq = seqs
            .iter()
            .find(|(i, _)| *i == entry.instance)
            .and_then(|(_, s)| s.parse().ok())
            .unwrap_or(0);
        assert_eq!(entry.seq, seq);
    }
}

/// The reference judgement of one entry, written apart from the decoder: `None` when a
/// reader must ignore it, else whether it is busy and unexpired at `now` (Unix nanos), and
/// its lock data.
fn busy_and_unexpired<'a>(
    field: &[u8],
    value: &'a [u8],
    now: u64,
) -> Option<(bool, Option<&'a str>)> {
    std::str::from_utf8(field).ok()?;
    if value.len() > MAX_VALUE_LEN {
        return None;
    }
    let mut parts = std::str::from_utf8(value).ok()?.splitn(3, ';');
    let busy = match parts.next()? {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    let ticks = parts.next()?;
    if ticks.is_empty() || !ticks.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Past what a u64 or a store time holds: the far future (the last whole tick).
    let ticks: u64 = ticks.parse().unwrap_or(u64::MAX);
    let since_epoch = u128::from(ticks.checked_sub(DOTNET_TICKS_AT_UNIX_EPOCH)?) * 100;
    let valid_until = u64::try_from(since_epoch).unwrap_or(u64::MAX / 100 * 100);
    Some((busy && valid_until > now, parts.next()))
}
