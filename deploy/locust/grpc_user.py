"""Locust against fafnir's public gRPC API (fafnir.gateway.Gateway).

    locust -f deploy/locust/grpc_user.py --host 127.0.0.1:50051 \
        --headless -u 20 -r 20 -t 10s --per-user-rate 25

Each simulated user registers a trader with a unique name and logs in once
(retrying with backoff while the gateway's per-peer limit on Register/Login,
or the password-hashing queue, answers RESOURCE_EXHAUSTED), deposits cash and
ACME shares, then runs one request per task, as fafnir_trading.OrderFlow
chooses: an ACME limit order (sides alternating around 10000 cents, one order
in four priced through the other side so that some cross), or the cancel of
one of its open orders (always when it holds --max-open of them, otherwise
with probability --cancel-share). The wait time is
`constant_throughput(--per-user-rate)`, so the offered request rate is
users x per-user rate as long as every answer comes back within
1 / per-user-rate: Locust is closed loop, a user sends its next request only
after the previous one has been answered. --trading-summary FILE writes the
rates of the trading phase alone (after the last user's set-up) as JSON.

Every call fires Locust's `request` event with request_type "grpc", the
method's name (Register, Login, Deposit, SubmitOrder, CancelOrder), the
response time in milliseconds and the grpc.RpcError on failure. A
CancelOrder answered FAILED_PRECONDITION (the order filled or was canceled
meanwhile) counts as a success: the platform answered as it should.

The Python stubs are generated at start from platform/proto/*.proto with
grpcio-tools into a cache directory keyed by the protos' contents and the
grpcio-tools and protobuf versions ($FAFNIR_LOCUST_STUBS, else
$XDG_CACHE_HOME/fafnir-locust, else ~/.cache/fafnir-locust), so the protos
stay the one source.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import sys
import tempfile
import time
import uuid
from importlib.metadata import version
from pathlib import Path

import gevent
import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, task
from locust.exception import StopUser

import fafnir_trading as trading
from fafnir_trading import CASH_CENTS, SHARES, SYMBOL, Cancel, OrderFlow

# grpcio's own threads would block gevent's loop: hand its I/O to gevent.
grpc_gevent.init_gevent()

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "platform" / "proto"


def _stubs_dir() -> Path:
    """Generates (once per proto contents) and returns the stubs' directory."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files in {PROTO_DIR}")
    # Keyed by the protos and by the generator's and runtime's versions.
    digest = hashlib.sha256(f"{version('grpcio-tools')} {version('protobuf')}\0".encode())
    for p in protos:
        digest.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    root = os.environ.get("FAFNIR_LOCUST_STUBS")
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "fafnir-locust")
    out = Path(root) / digest.hexdigest()[:16]
    if (out / "gateway_pb2_grpc.py").exists():
        return out
    from grpc_tools import protoc

    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Generated into a fresh directory, then renamed into place: several
    # Locust processes (--processes) may start at once.
    tmp = Path(tempfile.mkdtemp(prefix=".gen-", dir=out.parent))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={tmp}",
        f"--grpc_python_out={tmp}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO_DIR}")
    try:
        os.rename(tmp, out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


sys.path.insert(0, str(_stubs_dir()))
import common_pb2  # noqa: E402
import gateway_pb2  # noqa: E402
import gateway_pb2_grpc  # noqa: E402


class GrpcClient:
    """Wraps a Gateway stub: `client.SubmitOrder(req)` calls the method and
    reports it to Locust (request_type "grpc", name = the method)."""

    def __init__(self, environment, stub, metadata=(), timeout=10.0):
        self._env = environment
        self._stub = stub
        self.metadata = list(metadata)
        self.timeout = timeout

    def call(self, method: str, request, ok_codes=()):
        """Calls `method`; returns (reply, error). An RpcError whose code is in
        `ok_codes` is reported as a success (and still returned)."""
        start = time.perf_counter()
        reply, error = None, None
        try:
            reply = getattr(self._stub, method)(request, metadata=self.metadata, timeout=self.timeout)
        except grpc.RpcError as e:
            error = e
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        failed = error is not None and error.code() not in ok_codes
        self._env.events.request.fire(
            request_type="grpc",
            name=method,
            response_time=elapsed_ms,
            response_length=reply.ByteSize() if reply is not None else 0,
            response=reply,
            context={},
            exception=error if failed else None,
        )
        return reply, error

    def __getattr__(self, method):
        return lambda request, **kw: self.call(method, request, **kw)[0]


class GrpcUser(User):
    """A User whose `self.client` is a GrpcClient on its own channel to --host
    (host:port, an http:// prefix is ignored)."""

    abstract = True
    stub_class = None

    def __init__(self, environment):
        super().__init__(environment)
        target = (self.host or os.environ.get("FAFNIR_GATEWAY") or "127.0.0.1:50051").removeprefix("http://")
        self._channel = grpc.insecure_channel(target)
        self.client = GrpcClient(environment, self.stub_class(self._channel))

    def on_stop(self):
        self._channel.close()


_names = itertools.count()
_OPEN = (common_pb2.ORDER_STATUS_ACCEPTED, common_pb2.ORDER_STATUS_PARTIALLY_FILLED)
_RETRYABLE = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class Trader(GrpcUser):
    stub_class = gateway_pb2_grpc.GatewayStub

    def wait_time(self):
        return self._pace(self)

    def on_start(self):
        self._pace = trading.pacing(self.environment)
        # a-z 0-9 only, at most 32 bytes: unique per process and run.
        self.username = f"lg{uuid.uuid4().hex[:12]}{next(_names)}"
        self.password = uuid.uuid4().hex
        self.flow = OrderFlow(self.environment, self.username)
        try:
            self._set_up()
        finally:
            trading.user_set_up(self.environment, "SubmitOrder", "CancelOrder")
        self._pace(self)  # start the pacing clock after set-up

    def _set_up(self):
        self._with_backoff(
            "Register",
            gateway_pb2.RegisterRequest(username=self.username, password=self.password, role=common_pb2.ROLE_TRADER),
            done={grpc.StatusCode.ALREADY_EXISTS},  # a retry of one that got through
        )
        reply = self._with_backoff("Login", gateway_pb2.LoginRequest(username=self.username, password=self.password))
        self.client.metadata = [("authorization", f"Bearer {reply.token}")]
        self._with_backoff("Deposit", gateway_pb2.DepositRequest(cents=CASH_CENTS, request_id=f"{self.username}-cash"))
        self._with_backoff(
            "Deposit",
            gateway_pb2.DepositRequest(symbol=SYMBOL, qty=SHARES, request_id=f"{self.username}-{SYMBOL}"),
        )

    def _with_backoff(self, method, request, done=frozenset(), attempts=12):
        delay = 0.1
        for _ in range(attempts):
            reply, error = self.client.call(method, request, ok_codes=done)
            if error is None or error.code() in done:
                return reply
            if error.code() not in _RETRYABLE:
                break
            gevent.sleep(delay * (0.5 + self.flow.rng.random()))
            delay = min(delay * 2, 3.0)
        raise StopUser()

    @task
    def trade(self):
        step = self.flow.next()
        if isinstance(step, Cancel):
            self.client.call(
                "CancelOrder",
                gateway_pb2.CancelOrderRequest(order_id=step.order_id),
                ok_codes={grpc.StatusCode.FAILED_PRECONDITION},
            )
            return
        req = gateway_pb2.SubmitOrderRequest(
            client_order_id=step.client_order_id,
            symbol=SYMBOL,
            side=common_pb2.SIDE_BUY if step.buy else common_pb2.SIDE_SELL,
            order_type=common_pb2.ORDER_TYPE_LIMIT,
            price_cents=step.price_cents,
            qty=step.qty,
        )
        reply, _ = self.client.call("SubmitOrder", req)
        if reply is not None:
            self.flow.placed(reply.order_id, reply.status in _OPEN)
