//! The wire format and its parsers — everything another writer's bytes go through, so this
//! is the fuzzing surface: the key and channel names (the .NET library's), the .NET entry
//! value, our notification payload, and the publish command with its Lua script
//! (`publish.lua`).

use reactive_lock::{Entry, InstanceStatus, Snapshot, StoreTime};

/// The hash holding every instance's entry for `key` (the .NET name).
pub fn hash_name(key: &str) -> String {
    format!("{HASH_PREFIX}{key}")
}

/// The channel announcing changes of `key` (the .NET name).
pub fn channel_name(key: &str) -> String {
    format!("{CHANNEL_PREFIX}{key}")
}

/// Per-instance write sequences of `key`; the hash tag puts it in the .NET hash's slot.
pub(super) fn seq_hash_name(key: &str) -> String {
    format!("{{{HASH_PREFIX}{key}}}:seq")
}

pub(super) const HASH_PREFIX: &str = "ReactiveLock:Redis:HashSet:";

/// One command argument made of pieces, written straight into the command's buffer: a
/// publish names three keys and a sequence, and a `String` for each cost an allocation, a
/// copy into the command and a free, per transition.
pub(super) struct Joined<'a, const N: usize>([&'a [u8]; N]);

impl<const N: usize> redis::ToRedisArgs for Joined<'_, N> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        for piece in self.0 {
            // The writer appends to the command's in-memory buffer, which cannot fail.
            let _ = arg.write_all(piece);
        }
    }
}

/// `seq` as 20 zero-padded digits (u64::MAX has 20), so the script can compare sequences
/// as strings (Lua's numbers are doubles, exact only to 2^53).
pub(super) fn seq_digits(seq: u64) -> [u8; 20] {
    let mut digits = [b'0'; 20];
    let mut rest = seq;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits
}

/// `EVALSHA` of [`PUBLISH_SCRIPT`] (by its `sha`) for `instance`'s `status` of `key` (see
/// the script for the arguments), built in one buffer.
pub(crate) fn publish_command(
    sha: &str,
    key: &str,
    instance: &str,
    status: &InstanceStatus,
) -> redis::Cmd {
    // At most a century: the script prints whole seconds with Lua's `%.14g`, exact below
    // 1e14 s (and .NET's DateTime ends in the year 9999 anyway).
    const CENTURY_US: u128 = 100 * 365 * 24 * 3600 * 1_000_000;
    let valid_for_us = status.valid_for.as_micros().min(CENTURY_US) as u64;
    let data = match status.lock_data.as_deref() {
        Some(data) if status.busy => data,
        _ => "",
    };
    let busy = status.busy;
    let (key, seq) = (key.as_bytes(), seq_digits(status.seq));
    let data_len = if data.is_empty() { 0 } else { data.len() + 1 };
    let mut command =
        redis::Cmd::with_capacity(12, 180 + 3 * key.len() + instance.len() + data_len);
    command
        .arg("EVALSHA")
        .arg(sha)
        .arg(2)
        .arg(Joined([HASH_PREFIX.as_bytes(), key]))
        .arg(Joined([b"{", HASH_PREFIX.as_bytes(), key, b"}:seq"]))
        .arg(instance)
        .arg(&seq[..]);
    if busy {
        // The validity's whole seconds plus those from the .NET epoch to the Unix epoch (the
        // script adds `TIME`'s Unix seconds), and its sub-second microseconds.
        command
            .arg("1")
            .arg(DOTNET_EPOCH_TO_UNIX_SECS + valid_for_us / 1_000_000)
            .arg(valid_for_us % 1_000_000);
    } else {
        // An idle entry's validUntil is never judged (only busy entries expire), so the
        // script takes it as it is, stamped here on this host's clock: that spares the
        // server the number formatting, about a fifth of the script's time.
        let ticks = StoreTime::now_system()
            .saturating_add(status.valid_for)
            .to_dotnet_ticks();
        command.arg("0").arg(ticks).arg(0);
    }
    if data.is_empty() {
        command.arg("");
    } else {
        command.arg(Joined([b";", data.as_bytes()]));
    }
    command.arg(Joined([CHANNEL_PREFIX.as_bytes(), key]));
    command
}

/// Seconds from 0001-01-01 (.NET's `DateTime` epoch) to the Unix epoch.
pub(super) const DOTNET_EPOCH_TO_UNIX_SECS: u64 = 62_135_596_800;

pub(super) const CHANNEL_PREFIX: &str = "ReactiveLock:Redis:HashSetNotifier:";
/// Our notification payloads: `RLv2\n{instance}\n{seq}\n{unix seconds}\n{microseconds}\n{value}`
/// (the server's clock as `TIME` returns it).
pub(super) const PAYLOAD_MAGIC: &str = "RLv2";

/// Entries and notifications longer than this are ignored as malformed: lock data is a
/// short label, and a huge value is a sign of something else writing into the hash.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

/// Entries of one key read at most: a hash that something else filled with more fields
/// is scanned whole in the read script, which returns this many — the unexpired busy ones
/// first, as they decide whether the key is blocked — and the rest are ignored and
/// counted ([`RedisStats::entries_over_limit`](super::RedisStats::entries_over_limit)), so a
/// read stays bounded in time and memory. Ten times the hub's default instances per key.
///
/// # Examples
///
/// ```
/// assert_eq!(reactive_lock_backends::redis::MAX_ENTRIES_PER_KEY, 10_000);
/// ```
pub const MAX_ENTRIES_PER_KEY: usize = 10_000;

/// Reply of the read script (`read.lua`): the hash's field count, raw entries (fields and
/// values may be any bytes), each entry's sequence, and `TIME` (seconds, microseconds).
pub(super) type ReadReply = (
    u64,
    Vec<(Vec<u8>, Vec<u8>)>,
    Vec<Option<String>>,
    (u64, u64),
);

/// The read script: see `read.lua`.
pub(super) const READ_SCRIPT: &str = include_str!("read.lua");

/// The instant `TIME` answered (Unix seconds, microseconds); `None` for a reply that is no
/// valid time (microseconds past a second, or beyond what a `StoreTime` holds).
pub(super) fn store_time_of(secs: u64, micros: u64) -> Option<StoreTime> {
    if micros >= 1_000_000 {
        return None;
    }
    secs.checked_mul(1_000_000_000)?
        .checked_add(micros * 1_000)
        .map(StoreTime::from_unix_nanos)
}

/// The latest validity a value can state: the last whole .NET tick a `StoreTime` holds, so
/// that it renders back to the ticks it was read from.
pub(super) const FAR_FUTURE: StoreTime = StoreTime::from_unix_nanos(u64::MAX / 100 * 100);

/// Parses a .NET value `"{1|0};{ticks}[;{data}]"`.
pub(super) fn parse_value(value: &[u8]) -> Result<(bool, StoreTime, Option<String>), &'static str> {
    if value.len() > MAX_VALUE_LEN {
        return Err("value longer than MAX_VALUE_LEN");
    }
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8")?;
    let mut parts = text.splitn(3, ';');
    let busy = match parts.next() {
        Some("1") => true,
        Some("0") => false,
        _ => return Err("flag is neither 1 nor 0"),
    };
    let ticks = parts.next().ok_or("missing validUntil")?;
    // Decimal digits only (no sign), as the read script ranks entries by the same rule; a
    // validity past what a `StoreTime` holds (.NET's `DateTime.MaxValue`, a 20-digit number)
    // is the far future, as a .NET reader takes it, not an error.
    if ticks.is_empty() || !ticks.bytes().all(|b| b.is_ascii_digit()) {
        return Err("validUntil is not a number");
    }
    let ticks: u64 = ticks.parse().unwrap_or(u64::MAX);
    // .NET ticks at 1970-01-01: earlier validities are no time this store can hold.
    const DOTNET_TICKS_AT_UNIX_EPOCH: u64 = 621_355_968_000_000_000;
    let valid_until = if ticks < DOTNET_TICKS_AT_UNIX_EPOCH {
        return Err("validUntil before the Unix epoch");
    } else {
        StoreTime::from_dotnet_ticks(ticks).unwrap_or(FAR_FUTURE)
    };
    let data = parts.next().map(String::from);
    Ok((busy, valid_until, data))
}

/// A key's snapshot from the read script's entries, each with its sequence (aligned; `None`
/// for none), judged on the server's `store_now`: every entry that parses, stamped with its
/// sequence. An entry another writer left unreadable (a field or value that is not UTF-8 or
/// not the .NET format) is left out and reported to `malformed` (field, value, why): one
/// bad entry must not hide the others.
pub(super) fn snapshot_from_reply(
    key: &str,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    seqs: Vec<Option<String>>,
    store_now: StoreTime,
    mut malformed: impl FnMut(&str, &[u8], &'static str),
) -> Snapshot {
    let mut out = Vec::with_capacity(entries.len());
    for ((field, value), seq) in entries
        .into_iter()
        .zip(seqs.into_iter().chain(std::iter::repeat(None)))
    {
        let instance = match String::from_utf8(field) {
            Ok(instance) => instance,
            Err(field) => {
                // Reported lossily: the field is all a reader has to find the writer by.
                let field = String::from_utf8_lossy(field.as_bytes());
                malformed(&field, &value, "instance name is not UTF-8");
                continue;
            }
        };
        match parse_value(&value) {
            Ok((busy, valid_until, data)) => {
                let seq = seq.and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push(Entry::new(instance, busy, data, valid_until).with_seq(seq));
            }
            Err(why) => malformed(&instance, &value, why),
        }
    }
    Snapshot::new(key, out, store_now)
}

pub(super) enum Payload {
    /// Our notification: the writer's entry (its `seq` set) and the store's clock then.
    Ours {
        entry: Entry,
        store_now: StoreTime,
    },
    Foreign,
    Malformed(&'static str),
}

pub(super) fn parse_payload(payload: &[u8]) -> Payload {
    if payload.len() > MAX_VALUE_LEN + 256 {
        return Payload::Malformed("notification longer than MAX_VALUE_LEN");
    }
    let Ok(text) = std::str::from_utf8(payload) else {
        return if payload.starts_with(PAYLOAD_MAGIC.as_bytes()) {
            Payload::Malformed("notification is not UTF-8")
        } else {
            Payload::Foreign
        };
    };
    let (magic, rest) = text.split_once('\n').unwrap_or((text, ""));
    if magic != PAYLOAD_MAGIC {
        return Payload::Foreign;
    }
    // The value comes last: lock data may hold newlines.
    let mut parts = rest.splitn(5, '\n');
    let (Some(instance), Some(seq), Some(now)) = (parts.next(), parts.next(), parts.next()) else {
        return Payload::Malformed("notification has missing fields");
    };
    let Ok(seq) = seq.parse::<u64>() else {
        return Payload::Malformed("notification sequence is not a number");
    };
    // `TIME`'s seconds and microseconds.
    let store_now = parts
        .next()
        .and_then(|micros| Some((now.parse::<u64>().ok()?, micros.parse::<u64>().ok()?)))
        .and_then(|(secs, micros)| store_time_of(secs, micros));
    let Some(store_now) = store_now else {
        return Payload::Malformed("notification clock is not a valid time");
    };
    let Some(value) = parts.next() else {
        return Payload::Malformed("notification has missing fields");
    };
    match parse_value(value.as_bytes()) {
        Ok((busy, valid_until, data)) => Payload::Ours {
            entry: Entry::new(instance, busy, data, valid_until).with_seq(seq),
            store_now,
        },
        Err(why) => Payload::Malformed(why),
    }
}

/// TIME + ordered HSET + PUBLISH in one atomic step. Lua numbers are doubles, so .NET ticks
/// (~6.4e17, beyond 2^53) are built as strings from exact parts: whole seconds since
/// 0001-01-01 (~6.4e10, printed exactly by Lua's `%.14g` number-to-string) and the 7-digit
/// sub-second tick count. Printing a number (and more so `string.format`, or any library
/// call) is a large part of the script's time on the server, so the script prints as little
/// as it can:
/// * a busy status's validity comes as whole seconds already offset to the .NET epoch
///   (`ARGV[4]`) and sub-second microseconds (`ARGV[5]`). With whole seconds (`0`, the usual
///   case) the sub-second ticks are `TIME`'s microseconds as they are, zero-padded by a
///   string operation: one number printed in all. Otherwise the microseconds are summed
///   with a carry, and a second number is printed;
/// * an idle status's validUntil comes ready (`ARGV[4]`): it is never judged.
///
/// Sequences are compared as zero-padded 20-digit strings for the same reason. A status
/// older than the one held is not written: the script returns the held sequence (a string;
/// `1` means written), so the caller can continue above it. They live in
/// a hash beside the .NET one, with no expiry, as the .NET hash's fields have none.
/// The notification carries `TIME`'s two numbers as they are, and the lock data comes
/// ready to append (`;data`, or empty).
pub(crate) const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn publish_command_names_the_dotnet_keys_and_pads_the_sequence() {
        let args = |cmd: &redis::Cmd| -> Vec<Vec<u8>> {
            cmd.args_iter()
                .map(|arg| match arg {
                    redis::Arg::Simple(bytes) => bytes.to_vec(),
                    other => format!("<{other:?}>").into_bytes(),
                })
                .collect()
        };
        let expected = |seq: &str, busy: &str, until: &str, sub: &str, data: &str| {
            [
                "EVALSHA",
                "0123abcd",
                "2",
                "ReactiveLock:Redis:HashSet:payments",
                "{ReactiveLock:Redis:HashSet:payments}:seq",
                "api-1",
                seq,
                busy,
                until,
                sub,
                data,
                "ReactiveLock:Redis:HashSetNotifier:payments",
            ]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect::<Vec<_>>()
        };
        let valid_for = Duration::from_secs(10);
        let busy = InstanceStatus::busy(Some("b-7".into()), 42, valid_for);
        let busy = publish_command("0123abcd", "payments", "api-1", &busy);
        let seq = "00000000000000000042";
        assert_eq!(args(&busy), expected(seq, "1", "62135596810", "0", ";b-7"));
        // Sub-second validity: the microseconds apart, for the script to carry.
        let odd = InstanceStatus::busy(None, 42, Duration::from_micros(2_500_001));
        let odd = publish_command("0123abcd", "payments", "api-1", &odd);
        assert_eq!(args(&odd), expected(seq, "1", "62135596802", "500001", ""));
        // Idle: validUntil stamped here (on this host's clock), never judged.
        let before = StoreTime::now_system().saturating_add(valid_for);
        let idle = InstanceStatus::idle(u64::MAX, valid_for);
        let idle = publish_command("0123abcd", "payments", "api-1", &idle);
        let after = StoreTime::now_system().saturating_add(valid_for);
        let ticks: u64 = std::str::from_utf8(&args(&idle)[8])
            .unwrap()
            .parse()
            .unwrap();
        assert!((before.to_dotnet_ticks()..=after.to_dotnet_ticks()).contains(&ticks));
        let mut idle = args(&idle);
        idle[8] = b"ticks".to_vec();
        assert_eq!(
            idle,
            expected("18446744073709551615", "0", "ticks", "0", "")
        );
        // The names the rest of the backend uses (reads, subscriptions) are the same.
        assert_eq!(args(&busy)[3], hash_name("payments").into_bytes());
        assert_eq!(args(&busy)[4], seq_hash_name("payments").into_bytes());
        assert_eq!(args(&busy)[11], channel_name("payments").into_bytes());
    }

    #[test]
    fn sequences_compare_as_strings_in_numeric_order() {
        assert_eq!(&seq_digits(0), b"00000000000000000000");
        let seqs = [0, 9, 10, 1_764_570_000_000_000_001, u64::MAX - 1, u64::MAX];
        for pair in seqs.windows(2) {
            assert!(seq_digits(pair[0]) < seq_digits(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn a_time_reply_out_of_range_is_no_time() {
        assert_eq!(
            store_time_of(1, 500_000),
            Some(StoreTime::from_unix_nanos(1_500_000_000))
        );
        assert_eq!(store_time_of(1, 1_000_000), None, "micros past a second");
        assert_eq!(store_time_of(u64::MAX, 0), None, "seconds overflow nanos");
        assert_eq!(store_time_of(u64::MAX / 1_000_000_000, 999_999), None);
        assert_eq!(store_time_of(0, u64::MAX), None);
    }

    #[test]
    fn parses_dotnet_values() {
        let t = StoreTime::from_unix_nanos(1_700_000_000_123_456_700);
        let ticks = t.to_dotnet_ticks();
        assert_eq!(
            parse_value(format!("1;{ticks};x;y").as_bytes()),
            Ok((true, t, Some("x;y".into())))
        );
        assert_eq!(
            parse_value(format!("0;{ticks}").as_bytes()),
            Ok((false, t, None))
        );
        assert!(parse_value(b"2;1").is_err());
        assert!(parse_value(b"1").is_err());
        assert!(parse_value(b"1;abc").is_err());
        assert!(parse_value(b"1;5").is_err(), "ticks before the Unix epoch");
        assert!(parse_value(&[0xff, 0xfe]).is_err());
        // Past what a StoreTime holds: the far future, as .NET reads DateTime.MaxValue.
        let far = FAR_FUTURE;
        for ticks in [
            "3155378975999999999",
            "99999999999999999999",
            "18446744073709551615",
        ] {
            assert_eq!(
                parse_value(format!("1;{ticks}").as_bytes()),
                Ok((true, far, None)),
                "{ticks}"
            );
        }
        assert_eq!(
            parse_value(format!("1;0{ticks}").as_bytes()),
            Ok((true, t, None)),
            "a leading zero is the same number"
        );
        assert!(
            parse_value(format!("1;+{ticks}").as_bytes()).is_err(),
            "no sign"
        );
        assert!(parse_value(format!("1;{ticks}x").as_bytes()).is_err());
        assert!(parse_value(b"1;").is_err());
        let long = format!("1;{ticks};{}", "x".repeat(MAX_VALUE_LEN));
        assert!(
            parse_value(long.as_bytes()).is_err(),
            "longer than MAX_VALUE_LEN"
        );
    }

    #[test]
    fn parses_payloads() {
        let now = StoreTime::from_unix_nanos(1_700_000_000_123_456_000);
        let v2 = format!(
            "RLv2\ni-1\n42\n1700000000\n123456\n1;{};data\nwith newline",
            now.to_dotnet_ticks() + 1
        );
        assert_parses_as_ours(&v2, now);
        // A format never released is not ours.
        assert!(matches!(
            parse_payload(b"RLv1\ni-1\n42\n1\n1;1"),
            Payload::Foreign
        ));
        assert!(matches!(
            parse_payload(b"1;638000000000000000;x"),
            Payload::Foreign
        ));
        assert!(matches!(
            parse_payload(b"RLv3\ni\n1\n1\n1\n1;1"),
            Payload::Foreign
        ));
        for malformed in [
            &b"RLv2\ni"[..],
            b"RLv2\ni\nx\n1\n1;1",
            b"RLv2\ni\n1\n1700000000\n1;1",
            b"RLv2\ni\n1\n1700000000\n1000000\n1;1",
            b"RLv2\ni\n1\nnow\n0\n1;1",
            b"RLv2\ni\n1\n18446744073709551615\n0\n1;1",
            b"RLv2\ni\n1\n1700000000\n5",
        ] {
            assert!(
                matches!(parse_payload(malformed), Payload::Malformed(_)),
                "{}",
                String::from_utf8_lossy(malformed)
            );
        }
    }

    fn assert_parses_as_ours(p: &str, now: StoreTime) {
        match parse_payload(p.as_bytes()) {
            Payload::Ours { entry, store_now } => {
                assert_eq!(
                    (entry.instance.as_str(), entry.seq, store_now, entry.busy),
                    ("i-1", 42, now, true)
                );
                assert_eq!(entry.lock_data.as_deref(), Some("data\nwith newline"));
            }
            _ => panic!("expected our payload: {p:?}"),
        }
    }
}
