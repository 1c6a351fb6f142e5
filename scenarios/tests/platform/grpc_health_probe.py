"""Asks the gRPC health service (grpc.health.v1.Health) of a server with
grpcio, a gRPC implementation other than the server's, the way a load
balancer or an orchestrator's probe would.

Usage: grpc_health_probe.py HOST:PORT SERVICE...

For each SERVICE ("" is the whole server) it prints one line: the name (""
shown as ""), then the Check answer (SERVING, NOT_SERVING, ...) or the call's
status code (NOT_FOUND, UNAVAILABLE, ...). Then, for the last SERVICE, one
line "watch NAME STATUS" with the first message of a Watch. The messages are
encoded by hand from the protocol's definition (HealthCheckRequest: string
service = 1; HealthCheckResponse: enum status = 1), so no generated stubs are
needed. Used by scenarios/tests/platform/real.rs.
"""

import sys

import grpc

STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
TIMEOUT_S = 5


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def encode_request(service: str) -> bytes:
    """HealthCheckRequest: field 1, a string (proto3 leaves out an empty one)."""
    name = service.encode()
    return b"\x0a" + varint(len(name)) + name if name else b""


def decode_status(data: bytes) -> str:
    """HealthCheckResponse: field 1, an enum (absent: 0, UNKNOWN)."""
    status, i = 0, 0
    while i < len(data):
        key, i = read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
            if field == 1:
                status = value
        elif wire == 2:
            length, i = read_varint(data, i)
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return STATUSES.get(status, f"status {status}")


def shown(service: str) -> str:
    return service if service else '""'


def main() -> int:
    addr, services = sys.argv[1], sys.argv[2:]
    if not services:
        print(__doc__, file=sys.stderr)
        return 2
    with grpc.insecure_channel(addr) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=encode_request,
            response_deserializer=decode_status,
        )
        for service in services:
            try:
                answer = check(service, timeout=TIMEOUT_S)
            except grpc.RpcError as e:
                answer = e.code().name
            print(shown(service), answer)
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=encode_request,
            response_deserializer=decode_status,
        )
        stream = watch(services[-1], timeout=TIMEOUT_S)
        try:
            first = next(stream)
        except grpc.RpcError as e:
            first = e.code().name
        finally:
            stream.cancel()
        print("watch", shown(services[-1]), first)
    return 0


if __name__ == "__main__":
    sys.exit(main())
