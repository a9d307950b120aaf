//! The Redis wire decoders on arbitrary bytes: a hash field's value (the .NET format
//! `"{1|0};{ticks}[;{data}]"`) and a notification payload (ours, `RLv2`, or a .NET
//! writer's bare value). Anyone with access to the Redis server writes these bytes, so a
//! decoder must answer every input with a value or an error, never a panic, and whatever it
//! accepts must mean one thing: re-rendered canonically, it decodes to the same.
use reactive_lock_backends::redis::fuzzing::{MAX_VALUE_LEN, parse_payload, parse_value};

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    if let Ok((busy, valid_until, lock_data)) = parse_value(data) {
        assert!(data.len() <= MAX_VALUE_LEN);
        assert_eq!(data[0], if busy { b'1' } else { b'0' });
        assert_eq!(data[1], b';');
        let canonical = render_value(busy, valid_until.to_dotnet_ticks(), lock_data.as_deref());
        assert_eq!(
            parse_value(canonical.as_bytes()),
            Ok((busy, valid_until, lock_data.clone()))
        );
    }
    match parse_payload(data) {
        Ok(Some((entry, store_now))) => {
            assert!(data.starts_with(b"RLv2\n"));
            // `TIME` has microseconds: a store clock with finer digits was not read from it.
            assert_eq!(store_now.as_unix_nanos() % 1_000, 0);
            let value = render_value(
                entry.busy,
                entry.valid_until.to_dotnet_ticks(),
                entry.lock_data.as_deref(),
            );
            let nanos = store_now.as_unix_nanos();
            let canonical = format!(
                "RLv2\n{}\n{}\n{}\n{}\n{value}",
                entry.instance,
                entry.seq,
                nanos / 1_000_000_000,
                nanos % 1_000_000_000 / 1_000
            );
            match parse_payload(canonical.as_bytes()) {
                Ok(Some((again, again_now))) => {
                    // The instance name cannot hold a newline, so it survives the re-render.
                    assert_eq!((&again, again_now), (&entry, store_now));
                }
                other => panic!("canonical payload {canonical:?} decoded as {other:?}"),
            }
        }
        // A .NET writer's bare value (subscribers re-read the hash): never one of ours.
        Ok(None) => assert!(!data.starts_with(b"RLv2\n") && data != b"RLv2"),
        Err(_) => {}
    }
}

fn render_value(busy: bool, ticks: u64, lock_data: Option<&str>) -> String {
    let flag = if busy { 1 } else { 0 };
    match lock_data {
        Some(data) => format!("{flag};{ticks};{data}"),
        None => format!("{flag};{ticks}"),
    }
}
