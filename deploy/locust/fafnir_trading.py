"""What grpc_user.py and graphql_user.py share: their command-line options,
the order flow of one trader, and the record of the trading phase.

Not a locustfile (it defines no User); Locust puts the locustfile's directory
on sys.path, so the locustfiles import it by name.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import deque
from dataclasses import dataclass

from locust import constant_throughput, events

SYMBOL = "ACME"
REFERENCE_CENTS = 10000  # ACME: tick 1 cent, lot 1
CASH_CENTS = 1_000_000_000  # $10M: never short of cash for 1-5 share orders
SHARES = 1_000_000


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument(
        "--per-user-rate",
        type=float,
        default=25.0,
        env_var="FAFNIR_LOCUST_PER_USER_RATE",
        help="Requests per second each user aims at (constant_throughput); offered rate = users x this",
    )
    parser.add_argument(
        "--cancel-share",
        type=float,
        default=0.3,
        env_var="FAFNIR_LOCUST_CANCEL_SHARE",
        help="Probability that a task cancels one of the user's open orders instead of submitting",
    )
    parser.add_argument(
        "--max-open",
        type=int,
        default=10,
        env_var="FAFNIR_LOCUST_MAX_OPEN",
        help="At this many open orders a user cancels its oldest instead of submitting",
    )
    parser.add_argument(
        "--trading-summary",
        default="",
        env_var="FAFNIR_LOCUST_TRADING_SUMMARY",
        help="Write the trading phase's figures (from the moment every user is set up) to this JSON file",
    )


def option(environment, name, default):
    opts = environment.parsed_options
    return getattr(opts, name, default) if opts is not None else default


@dataclass
class Submit:
    client_order_id: str
    buy: bool
    price_cents: int
    qty: int


@dataclass
class Cancel:
    order_id: object


class OrderFlow:
    """One trader's next request: the cancel of one of its open orders
    (always at max_open, otherwise with probability cancel_share), else an
    ACME limit order. Sides alternate; a passive order rests 1-5 ticks on its
    own side of 10000 cents, and one buy and one sell in eight go 1-5 ticks
    through it, so that they cross resting orders of other users."""

    def __init__(self, environment, name: str, sells: bool = True):
        self.name = name
        self.sells = sells
        self.cancel_share = option(environment, "cancel_share", 0.3)
        self.max_open = option(environment, "max_open", 10)
        self.rng = random.Random()
        self.open: deque = deque()  # ids of orders believed open, oldest first
        self.n = 0

    def next(self):
        if self.open and (len(self.open) >= self.max_open or self.rng.random() < self.cancel_share):
            if len(self.open) >= self.max_open:
                return Cancel(self.open.popleft())
            i = self.rng.randrange(len(self.open))
            self.open.rotate(-i)
            order_id = self.open.popleft()
            self.open.rotate(i)
            return Cancel(order_id)
        self.n += 1
        buy = self.n % 2 == 0 or not self.sells
        offset = self.rng.randint(1, 5)
        through = self.n % 8 < 2
        price = REFERENCE_CENTS + (offset if buy == through else -offset)
        return Submit(f"{self.name}-{self.n}", buy, price, self.rng.randint(1, 5))

    def placed(self, order_id, still_open: bool):
        if still_open:
            self.open.append(order_id)


def pacing(environment):
    """constant_throughput(--per-user-rate), as a function of the user."""
    return constant_throughput(option(environment, "per_user_rate", 25.0))


# The trading phase: from the moment the last user has finished its set-up
# (registered, logged in, deposited; or given up) to the end of the test.
_phase = {"users_done": 0, "t_ready": None, "at_ready": None}


def _counts(environment, submit: str, cancel: str) -> dict:
    stats = environment.stats
    total = stats.total
    s = stats.entries.get((submit, _method(stats, submit)))
    c = stats.entries.get((cancel, _method(stats, cancel)))
    return {
        "requests": total.num_requests,
        "failures": total.num_failures,
        "submits": s.num_requests if s else 0,
        "submit_failures": s.num_failures if s else 0,
        "cancels": c.num_requests if c else 0,
        "cancel_failures": c.num_failures if c else 0,
    }


def _method(stats, name):
    for n, m in stats.entries:
        if n == name:
            return m
    return None


def user_set_up(environment, submit: str, cancel: str) -> None:
    """Called by each user once its set-up is over (done or given up)."""
    _phase["users_done"] += 1
    runner = environment.runner
    target = getattr(runner, "target_user_count", None) if runner else None
    if _phase["t_ready"] is None and target and _phase["users_done"] >= target:
        _phase["t_ready"] = time.time()
        _phase["at_ready"] = _counts(environment, submit, cancel)
        _phase["names"] = (submit, cancel)


@events.test_stop.add_listener
def _write_phase(environment, **_kw):
    path = option(environment, "trading_summary", "")
    if not path or _phase["t_ready"] is None:
        return
    end = _counts(environment, *_phase["names"])
    start = _phase["at_ready"]
    seconds = max(time.time() - _phase["t_ready"], 1e-9)
    out = {
        "users": _phase["users_done"],
        "seconds": seconds,
        **{f"{k}_per_s": (end[k] - start[k]) / seconds for k in ("requests", "submits", "cancels")},
        **{k: end[k] - start[k] for k in end},
    }
    with open(f"{path}.tmp{os.getpid()}", "w") as fh:
        json.dump(out, fh, indent=2)
    os.replace(f"{path}.tmp{os.getpid()}", path)
