#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/: real .NET values and payloads,
protobuf notifications as hubs send them, and hub scenarios in hub_ops' operation format.
The fuzzers grow their own corpora from these; only these seeds are committed."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = 1735689600  # 2025-01-01T00:00:00Z
TICKS_AT_UNIX_EPOCH = 621355968000000000


def ticks(unix_secs, extra_ticks=0):
    return unix_secs * 10_000_000 + TICKS_AT_UNIX_EPOCH + extra_ticks


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# redis_wire: values as the .NET library writes them, and payloads as our script publishes them.
T = ticks(NOW)
for name, value in {
    "dotnet_busy_with_data": f"1;{T};batch-7",
    "dotnet_idle": f"0;{T}",
    "dotnet_busy_empty_data": f"1;{T};",
    "data_with_separators": f"1;{T};a;b#REACTIVELOCK#c",
    "unix_epoch": f"1;{TICKS_AT_UNIX_EPOCH}",
    "before_unix_epoch": f"1;{TICKS_AT_UNIX_EPOCH - 1}",
    "ticks_max": "1;18446744073709551615",
    "payload_busy": f"RLv2\napi-1\n42\n{NOW}\n123456\n1;{T + 100_000_000};batch-7",
    "payload_idle_max_seq": f"RLv2\napi-1\n18446744073709551615\n{NOW}\n999999\n0;{T}",
    "payload_data_newline": f"RLv2\napi-2\n7\n{NOW}\n0\n1;{T + 1};line 1\nline 2",
    "payload_micros_out_of_range": f"RLv2\ni\n1\n{NOW}\n1000000\n1;{T}",
}.items():
    write("redis_wire", name, value)
write("redis_wire", "not_utf8", b"RLv2\n\xff\xfe\n1")

# redis_snapshot: `TIME`, then entries and sequences.
write("redis_snapshot", "two_instances",
      f"{NOW} 0\napi-1\t1;{T + 100_000_000};batch-7\napi-2\t0;{T + 100_000_000}\n"
      "seq\tapi-1\t00000000000000000042\n")
write("redis_snapshot", "expiry_boundary",
      f"{NOW} 0\nat-now\t1;{T}\none-tick-later\t1;{T + 1}\n")
write("redis_snapshot", "expired_only", f"{NOW} 1\nold\t1;{T}\n")
write("redis_snapshot", "malformed_beside_busy",
      f"{NOW} 0\nbad\t2;1\nbad-ticks\t1;abc\nbusy\t1;{T + 10};x\n".encode()
      + b"\xff\xfe\t1;" + str(T + 10).encode() + b"\n")
# Another writer's lock data holding the separator reads as two entries, as in .NET.
write("redis_snapshot", "data_with_separator",
      f"{NOW} 0\napi-1\t1;{T + 10};a#REACTIVELOCK#b#REACTIVELOCK#c\napi-2\t1;{T + 10};#REACTIVELOCK#\n")
write("redis_snapshot", "time_max", f"18446744073709551615 999999\nfar\t1;18446744073709551615\n")

# grpc_notifications: protobuf LockStatusNotification per hub.
def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(number, wire_type, payload):
    key = varint(number << 3 | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def timestamp(seconds, nanos=0):
    return field(1, 0, varint(seconds)) + field(2, 0, varint(nanos))


def status(busy, data=None, until=None):
    out = field(1, 0, varint(1)) if busy else b""
    if data is not None:
        out += field(2, 2, field(1, 2, data.encode()) if data else b"")
    if until is not None:
        out += field(3, 2, timestamp(*until))
    return out


def notification(key, instances):
    out = field(1, 2, key.encode())
    for instance, st in instances.items():
        out += field(2, 2, field(1, 2, instance.encode()) + field(2, 2, st))
    return out


def hubs(*per_hub):
    out = b""
    for n in per_hub:
        if n is None:
            out += b"\x00\x00\x00"
        else:
            out += b"\x01" + struct.pack(">H", len(n)) + n
    return out


FAR = 4102444800  # 2100-01-01
write("grpc_notifications", "one_hub_busy",
      hubs(notification("payments", {"api-1": status(True, "batch-7", (FAR, 0)),
                                      "api-2": status(False, None, (FAR, 0))})))
write("grpc_notifications", "two_hubs_newest_wins",
      hubs(notification("payments", {"api-1": status(True, "", (FAR, 5))}),
           notification("payments", {"api-1": status(False, None, (FAR, 6))})))
write("grpc_notifications", "hub_down_and_expired",
      hubs(None, notification("payments", {"api-1": status(True, "x", (NOW, 0))})))
write("grpc_notifications", "timestamps_out_of_range",
      hubs(notification("payments", {"neg": status(True, None, (-5, 0)),
                                      "huge": status(True, None, ((1 << 63) - 1, -1)),
                                      "nanos": status(True, None, (FAR, 2_000_000_000)),
                                      "none": status(True, "y")})))

# hub_ops: opcode, then operands (see hub_ops.rs). Request flags: bit 0 busy, bits 1-2
# lock data (0 none, 1 short, 2 oversized, 3 empty), bits 3-4 validUntil (0 none, 1-2
# from now, 3 raw).
def request(busy, key, instance, data=None, until=None, raw_until=None, big=None):
    flags = 1 if busy else 0
    operands = b""
    if big is not None:
        flags |= 2 << 1
        operands += struct.pack(">H", big)
    elif data is not None:
        flags |= (1 << 1) if data else (3 << 1)
        if data:
            operands += bytes([len(data)]) + data.encode()
    if raw_until is not None:
        flags |= 3 << 3
        operands += struct.pack(">qi", *raw_until)
    elif until is not None:
        flags |= 1 << 3
        operands += struct.pack(">hi", until, 0)
    return bytes([flags, key, instance]) + operands


SET, SUBSCRIBE, STREAM, RAW, CLOSE, DROP, FORGET, CHECK = range(8)
write("hub_ops", "busy_then_idle",
      bytes([SET]) + request(True, 0, 0, "batch-7", until=600)
      + bytes([SUBSCRIBE, 0]) + request(False, 0, 1)
      + bytes([CHECK, SET]) + request(False, 0, 0, until=601) + bytes([CHECK]))
write("hub_ops", "streamed_statuses",
      bytes([SUBSCRIBE, 1]) + request(False, 1, 1)
      + bytes([STREAM, 0]) + request(True, 1, 1, until=300)
      + bytes([CHECK, STREAM, 0]) + request(False, 1, 1, until=301)
      + bytes([CLOSE, 0, CHECK, DROP, 0, CHECK]))
write("hub_ops", "timestamps_out_of_range",
      bytes([SET]) + request(True, 2, 2, raw_until=((1 << 63) - 1, -1))
      + bytes([SET]) + request(True, 2, 3, raw_until=(-5, 2_000_000_000))
      + bytes([SET]) + request(True, 2, 0, until=-10) + bytes([CHECK]))
write("hub_ops", "oversized_lock_data",
      bytes([SET]) + request(True, 0, 0, big=0x1000)
      + bytes([SUBSCRIBE, 0]) + request(False, 0, 1)
      + bytes([STREAM, 0]) + request(True, 0, 1, big=0x2000, until=100) + bytes([CHECK]))
write("hub_ops", "limits_and_forgetting",
      b"".join(bytes([SET]) + request(True, k, i, "d", until=-1) for k in range(4) for i in range(4))
      + bytes([FORGET, SET]) + request(True, 3, 0, until=900) + bytes([CHECK]))
write("hub_ops", "garbage_frame",
      bytes([SUBSCRIBE, 0]) + request(False, 1, 2)
      + bytes([RAW, 0, 7]) + b"\x00\x00\x00\x00\x02\x0a\x00" + bytes([CHECK]))

# controller_ops: a threshold byte, then operations (increment, decrement, enter, leave).
write("controller_ops", "threshold_one_enter_leave", bytes([0, 2, 3, 0, 1 | 4]))
write("controller_ops", "threshold_three_hysteresis", bytes([2, 0, 0, 0, 1 | 4, 0, 1 | 8, 1 | 4, 2, 3]))
