"""Locust against fafnir's GraphQL API (`fafnir serve graphql`, also started
by `fafnir up`; POST {"query", "variables"} to /graphql).

    locust -f deploy/locust/graphql_user.py --host http://127.0.0.1:8080 \
        --headless -u 20 -r 20 -t 10s --per-user-rate 25

The same flow as grpc_user.py, over HTTP with FastHttpUser: each user
registers a trader with a unique name and logs in once (retrying with backoff
while the answer's error code is RESOURCE_EXHAUSTED or UNAVAILABLE), deposits
cash and ACME shares (if the schema's deposit does not take symbol and qty,
the user only buys), then runs one request per task as
fafnir_trading.OrderFlow chooses: an ACME limit order or the cancel of one of
its open orders. Wait time: constant_throughput(--per-user-rate).

Requests are named after the operation (register, login, deposit, "deposit
(shares)", submitOrder, cancelOrder). GraphQL answers errors with HTTP 200 and
an `errors` list whose `extensions.code` is the gRPC code's name: such a
response is marked as a failure, except a cancelOrder refused
FAILED_PRECONDITION (the order filled or was canceled meanwhile), which is the
platform answering as it should. Int64 values travel as JSON strings of
digits, ids as strings.
"""

from __future__ import annotations

import itertools
import logging
import uuid

import gevent
from locust import FastHttpUser, events, task
from locust.exception import StopUser

import fafnir_trading as trading
from fafnir_trading import CASH_CENTS, SHARES, SYMBOL, Cancel, OrderFlow

REGISTER = "mutation($u:String!,$p:String!){ register(username:$u, password:$p, role: TRADER){ userId } }"
LOGIN = "mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token userId } }"
DEPOSIT = "mutation($c:Int64!,$r:String!){ deposit(cents:$c, requestId:$r){ cashCents } }"
DEPOSIT_SHARES = "mutation($r:String!,$s:String!,$q:Int64!){ deposit(requestId:$r, symbol:$s, qty:$q){ cashCents } }"
SUBMIT = "mutation($i:SubmitOrderInput!){ submitOrder(input:$i){ id status } }"
CANCEL = "mutation($id:ID!){ cancelOrder(id:$id){ id status } }"

OPEN_STATUSES = {"ACCEPTED", "PARTIALLY_FILLED"}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument(
        "--graphql-path",
        default="/graphql",
        env_var="FAFNIR_LOCUST_GRAPHQL_PATH",
        help="Path of the GraphQL endpoint under --host",
    )


def _code(error) -> str:
    """An error's code, normalised: RESOURCE_EXHAUSTED and ResourceExhausted
    both read RESOURCEEXHAUSTED."""
    code = ((error or {}).get("extensions") or {}).get("code") or ""
    return str(code).replace("_", "").upper()


_RETRYABLE = {"RESOURCEEXHAUSTED", "UNAVAILABLE", "DEADLINEEXCEEDED"}
_names = itertools.count()
_said_buy_only = False


class GraphqlTrader(FastHttpUser):
    host = "http://127.0.0.1:8080"

    def wait_time(self):
        return self._pace(self)

    def gql(self, name, query, variables, ok_codes=()):
        """Posts one operation, reported as `name`; returns (data, codes of its errors)."""
        with self.client.post(
            self.path,
            json={"query": query, "variables": variables},
            headers=self.headers,
            name=name,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return None, ["HTTP"]
            try:
                body = resp.json()
            except Exception as e:  # noqa: BLE001 - not JSON: a failure, whatever it is
                resp.failure(f"not JSON: {e}")
                return None, ["JSON"]
            errors = body.get("errors") or []
            codes = [_code(e) for e in errors]
            if errors and not all(c in ok_codes for c in codes):
                first = errors[0]
                code = (first.get("extensions") or {}).get("code", "?")
                resp.failure(f"{code}: {first.get('message', '')}"[:200])
            else:
                resp.success()
            return body.get("data"), codes

    def on_start(self):
        self._pace = trading.pacing(self.environment)
        self.path = trading.option(self.environment, "graphql_path", "/graphql")
        self.headers = {}
        self.username = f"lq{uuid.uuid4().hex[:12]}{next(_names)}"
        self.password = uuid.uuid4().hex
        self.flow = OrderFlow(self.environment, self.username)
        try:
            self._set_up()
        finally:
            trading.user_set_up(self.environment, "submitOrder", "cancelOrder")
        self._pace(self)  # start the pacing clock after set-up

    def _set_up(self):
        creds = {"u": self.username, "p": self.password}
        self._with_backoff("register", REGISTER, creds, done={"ALREADYEXISTS"})
        data = self._with_backoff("login", LOGIN, creds)
        self.headers = {"Authorization": f"Bearer {data['login']['token']}"}
        self._with_backoff("deposit", DEPOSIT, {"c": str(CASH_CENTS), "r": f"{self.username}-cash"})
        self.flow.sells = self._deposit_shares()

    def _deposit_shares(self) -> bool:
        """Deposits ACME shares if the schema's deposit takes symbol and qty.
        Reported as "deposit (shares)"; a schema without them is no failure
        (the user then only buys), a refusal of the deposit itself is."""
        variables = {"r": f"{self.username}-{SYMBOL}", "s": SYMBOL, "q": str(SHARES)}
        with self.client.post(
            self.path,
            json={"query": DEPOSIT_SHARES, "variables": variables},
            headers=self.headers,
            name="deposit (shares)",
            catch_response=True,
        ) as resp:
            try:
                body = resp.json() if resp.status_code == 200 else {}
            except Exception:  # noqa: BLE001
                body = {}
            errors = body.get("errors") or []
            if body.get("data") and not errors:
                resp.success()
                return True
            # A validation error (no such argument) has no gRPC code.
            coded = [e for e in errors if _code(e) and _code(e) not in {"GRAPHQLVALIDATIONFAILED", "BADUSERINPUT"}]
            if coded:
                resp.failure(f"{(coded[0].get('extensions') or {}).get('code')}: {coded[0].get('message', '')}"[:200])
            else:
                resp.success()
        global _said_buy_only
        if not coded and not _said_buy_only:
            _said_buy_only = True
            logging.info("the GraphQL deposit takes no symbol/qty here: users hold no shares and only buy")
        return False

    def _with_backoff(self, name, query, variables, done=frozenset(), attempts=12):
        delay = 0.1
        for _ in range(attempts):
            data, codes = self.gql(name, query, variables, ok_codes=done)
            if not codes or all(c in done for c in codes):
                return data
            if not any(c in _RETRYABLE for c in codes):
                break
            gevent.sleep(delay * (0.5 + self.flow.rng.random()))
            delay = min(delay * 2, 3.0)
        raise StopUser()

    @task
    def trade(self):
        step = self.flow.next()
        if isinstance(step, Cancel):
            self.gql("cancelOrder", CANCEL, {"id": step.order_id}, ok_codes={"FAILEDPRECONDITION"})
            return
        order = {
            "clientOrderId": step.client_order_id,
            "symbol": SYMBOL,
            "side": "BUY" if step.buy else "SELL",
            "orderType": "LIMIT",
            "priceCents": str(step.price_cents),
            "qty": str(step.qty),
        }
        data, codes = self.gql("submitOrder", SUBMIT, {"i": order})
        placed = (data or {}).get("submitOrder") if not codes else None
        if placed:
            self.flow.placed(placed["id"], placed.get("status") in OPEN_STATUSES)
