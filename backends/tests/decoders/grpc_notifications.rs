//! The gRPC client's conversion of hub notifications into a key's snapshot, on arbitrary
//! bytes off the wire: each hub's latest `LockStatusNotification` (protobuf, as a hub — ours,
//! the .NET one, or anything listening on its address — sends it) merged per instance,
//! newest `validUntil` first. Invariant: the key is blocked exactly when some instance's
//! newest status is busy and unexpired; timestamps of any range (negative or huge seconds,
//! out-of-range nanos) are judged, never a panic.
//!
//! Input: a sequence of hubs, each `{present: u8}{len: u16 BE}{protobuf bytes}`; a hub
//! whose byte is even, or whose bytes do not decode, has no state (down, or a stream error).
use prost::Message;
use reactive_lock_backends::grpc::fuzzing::notifications_to_snapshot;
use reactive_lock_backends::grpc::proto::{InstanceLockStatus, LockStatusNotification};

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let mut per_hub = Vec::new();
    let mut rest = data;
    while let [present, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        per_hub.push(if present % 2 == 1 {
            LockStatusNotification::decode(bytes).ok()
        } else {
            None
        });
        if per_hub.len() == 8 {
            break;
        }
    }

    let snapshot = notifications_to_snapshot("payments", &per_hub);

    // The reference merge, written apart from the client's: per instance, the first of
    // the statuses with the newest validUntil (none is oldest).
    let mut newest: Vec<(&str, &InstanceLockStatus, Option<u64>)> = Vec::new();
    for notification in per_hub.iter().flatten() {
        for (instance, status) in &notification.instances_status {
            let until = status
                .valid_until
                .as_ref()
                .map(|t| unix_nanos(t.seconds, t.nanos));
            match newest.iter_mut().find(|(i, _, _)| i == instance) {
                Some(held) if held.2 < until => *held = (instance, status, until),
                Some(_) => {}
                None => newest.push((instance, status, until)),
            }
        }
    }
    let now = snapshot.store_now.as_unix_nanos();
    assert_eq!(snapshot.key, "payments");
    assert_eq!(snapshot.entries.len(), newest.len());
    for (instance, status, until) in &newest {
        let entry = snapshot
            .entries
            .iter()
            .find(|e| e.instance == *instance)
            .expect("every instance has an entry");
        assert_eq!(entry.busy, status.is_busy);
        assert_eq!(entry.valid_until.as_unix_nanos(), until.unwrap_or(0));
        // Empty lock data reads as none, as the .NET client reads it.
        let data = status.lock_data.as_deref().filter(|d| !d.is_empty());
        assert_eq!(entry.lock_data.as_deref(), data);
    }
    let blocked = newest
        .iter()
        .any(|(_, status, until)| status.is_busy && until.is_some_and(|u| u > now));
    assert_eq!(snapshot.is_blocked(), blocked);
    assert_eq!(snapshot.next_expiry().is_some(), blocked);
}

/// A protobuf `Timestamp` as Unix nanoseconds: before the epoch reads as the epoch, nanos
/// are clamped into their range, and times past `u64` nanoseconds (year 2554) saturate.
fn unix_nanos(seconds: i64, nanos: i32) -> u64 {
    if seconds < 0 {
        return 0;
    }
    let nanos = u128::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    let total = u128::try_from(seconds).unwrap_or(0) * 1_000_000_000 + nanos;
    u64::try_from(total).unwrap_or(u64::MAX)
}
