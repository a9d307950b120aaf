#!/usr/bin/env python3
"""A second gRPC implementation of the .NET ReactiveLock protocol (grpcio + protobuf),
generated from ReactiveLockGrpc.proto beside this file (written from the .NET source), for
the interop tests in ../grpc_dotnet_wire.rs.

    dotnet_peer.py client URL KEY [--expect INSTANCE=DATA ...]
        Acts as a .NET client against a hub: subscribes to KEY, sets three busy statuses
        (no lock data, empty lock data, lock data "x"), and checks that the hub's
        notifications carry them as .NET reads them (StringValue absent <=> null, present and
        empty <=> ""), plus every --expect entry (DATA "-" means: busy without lock data).
        Prints one JSON line with the hex bytes of the last notification read; exit 0 when
        everything matched, 1 with a message otherwise.

    dotnet_peer.py hub
        Serves the protocol the .NET way (statuses stored as sent, the key's full state
        broadcast to every subscriber on every change, lockData as a StringValue) on a free
        port of 127.0.0.1 and prints "PORT <n>" once it listens. Runs until killed.

grpcio and grpcio-tools must be installed (`pip install grpcio-tools`); the script says so
and exits 3 if they are not.
"""

import json
import os
import queue
import sys
import tempfile
import threading
import time
from concurrent import futures

try:
    import grpc
    from grpc_tools import protoc
    import importlib.resources as resources
except ImportError as missing:  # pragma: no cover - depends on the machine
    sys.stderr.write(
        f"dotnet_peer.py needs grpcio and grpcio-tools ({missing}); "
        "install them with: pip install grpcio-tools\n"
    )
    sys.exit(3)


def load_protocol():
    """Generates the Python modules for ReactiveLockGrpc.proto into a temporary directory."""
    here = os.path.dirname(os.path.abspath(__file__))
    out = tempfile.mkdtemp(prefix="reactive-lock-dotnet-proto-")
    well_known = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{here}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(here, "ReactiveLockGrpc.proto"),
        ]
    )
    if code != 0:
        sys.stderr.write(f"protoc failed with {code}\n")
        sys.exit(2)
    sys.path.insert(0, out)
    import ReactiveLockGrpc_pb2 as pb  # noqa: E402
    import ReactiveLockGrpc_pb2_grpc as pb_grpc  # noqa: E402

    return pb, pb_grpc


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


def run_client(url, key, expectations):
    pb, pb_grpc = load_protocol()
    from google.protobuf import timestamp_pb2, wrappers_pb2

    target = url.split("://", 1)[-1]
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.ReactiveLockGrpcStub(channel)

    # The raw bytes of each notification are kept, then decoded with the generated message.
    raw = channel.stream_stream(
        "/ReactiveLockGrpc/SubscribeLockStatus",
        request_serializer=pb.LockStatusRequest.SerializeToString,
        response_deserializer=lambda data: data,
    )
    stop = threading.Event()

    def requests():
        yield pb.LockStatusRequest(lockKey=key, instanceId="py-reader")
        stop.wait()

    responses = raw(requests(), timeout=20)

    until = timestamp_pb2.Timestamp()
    until.FromSeconds(int(time.time()) + 10)
    mine = {
        "py-none": None,
        "py-empty": "",
        "py-data": "x",
    }
    for instance, data in mine.items():
        request = pb.LockStatusRequest(
            lockKey=key, instanceId=instance, isBusy=True, validUntil=until
        )
        if data is not None:
            request.lockData.CopyFrom(wrappers_pb2.StringValue(value=data))
        stub.SetStatus(request, timeout=5)

    wanted = dict(mine)
    for instance, data in expectations.items():
        wanted[instance] = None if data == "-" else data

    def read(status):
        return status.lockData.value if status.HasField("lockData") else None

    last_bytes = b""
    problems = "no notification"
    try:
        for data in responses:
            last_bytes = data
            try:
                notification = pb.LockStatusNotification.FromString(data)
            except Exception as error:  # protobuf's DecodeError
                fail(f"cannot decode a notification ({error}): {data.hex()}")
            if notification.lockKey != key:
                fail(f"notification for key {notification.lockKey!r}, expected {key!r}")
            statuses = notification.instancesStatus
            problems = []
            for instance, expected in wanted.items():
                if instance not in statuses:
                    problems.append(f"{instance}: missing")
                    continue
                status = statuses[instance]
                if not status.isBusy:
                    problems.append(f"{instance}: not busy")
                if read(status) != expected:
                    problems.append(f"{instance}: lockData {read(status)!r}, expected {expected!r}")
                if not status.HasField("validUntil") or status.validUntil.seconds < time.time():
                    problems.append(f"{instance}: validUntil {status.validUntil} not ahead")
            if not problems:
                break
    except grpc.RpcError as error:
        fail(f"the subscription failed: {error.code()} {error.details()}; last problems: {problems}")
    finally:
        stop.set()
    if problems:
        fail(f"the hub's notifications never matched: {problems}")
    print(json.dumps({"ok": True, "notification_hex": last_bytes.hex()}))


def run_hub():
    pb, pb_grpc = load_protocol()

    class Hub(pb_grpc.ReactiveLockGrpcServicer):
        def __init__(self):
            self.lock = threading.Lock()
            self.keys = {}
            self.subscribers = {}

        def _broadcast(self, key):
            notification = pb.LockStatusNotification(lockKey=key)
            for instance, status in self.keys.get(key, {}).items():
                notification.instancesStatus[instance].CopyFrom(status)
            for subscriber in self.subscribers.get(key, []):
                subscriber.put(notification)
            return notification

        def SetStatus(self, request, context):
            with self.lock:
                status = pb.InstanceLockStatus(isBusy=request.isBusy)
                if request.HasField("lockData"):
                    status.lockData.CopyFrom(request.lockData)
                if request.HasField("validUntil"):
                    status.validUntil.CopyFrom(request.validUntil)
                self.keys.setdefault(request.lockKey, {})[request.instanceId] = status
                self._broadcast(request.lockKey)
            from google.protobuf import empty_pb2

            return empty_pb2.Empty()

        def SubscribeLockStatus(self, request_iterator, context):
            first = next(request_iterator)
            key = first.lockKey
            inbox = queue.Queue()
            with self.lock:
                self.subscribers.setdefault(key, []).append(inbox)
                notification = pb.LockStatusNotification(lockKey=key)
                for instance, status in self.keys.get(key, {}).items():
                    notification.instancesStatus[instance].CopyFrom(status)
                inbox.put(notification)
            try:
                while context.is_active():
                    try:
                        yield inbox.get(timeout=0.2)
                    except queue.Empty:
                        continue
            finally:
                with self.lock:
                    self.subscribers[key].remove(inbox)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    pb_grpc.add_ReactiveLockGrpcServicer_to_server(Hub(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


def main(argv):
    if len(argv) >= 2 and argv[1] == "hub":
        run_hub()
    elif len(argv) >= 4 and argv[1] == "client":
        expectations = {}
        rest = argv[4:]
        while rest:
            if rest[0] != "--expect" or len(rest) < 2 or "=" not in rest[1]:
                fail(f"unexpected arguments: {rest}")
            instance, data = rest[1].split("=", 1)
            expectations[instance] = data
            rest = rest[2:]
        run_client(argv[2], argv[3], expectations)
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
