#!/usr/bin/env python3
"""fafnir's GraphQL API end to end, from a client that is not the server's
own: plain HTTP (requests) and WebSocket (websockets, graphql-transport-ws).

    e2e.py http://127.0.0.1:8080/graphql

Two users register, log in and deposit; each subscribes to their executions;
they cross orders and each subscription delivers its fills; one user
disconnects, misses a trade, reconnects with the last cursor and gets what
was missed (and only that); balances and holdings come out exact. Then
hostile requests (deep nesting, aliases that multiply work, a huge list, an
unknown field, malformed JSON, an oversized body, an overflowing integer,
no token, a forged token, another user's order) each get a clear error and
change nothing. Exits non-zero, saying why, on the first failed check.
"""
import asyncio
import base64
import json
import sys
import time

import requests
import websockets

URL = sys.argv[1]
WS_URL = URL.replace("http://", "ws://")


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")
    print(f"ok: {what}")


def gql(query, variables=None, token=None, expect_errors=False):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.post(URL, json={"query": query, "variables": variables or {}}, headers=headers, timeout=10)
    if r.status_code != 200:
        sys.exit(f"FAILED: HTTP {r.status_code} for {query[:60]!r}: {r.text[:200]}")
    body = r.json()
    if not expect_errors and body.get("errors"):
        sys.exit(f"FAILED: {query[:60]!r} answered errors {body['errors']}")
    return body


def error_code(body):
    errors = body.get("errors") or []
    return (errors[0].get("extensions") or {}).get("code") if errors else None


def session(name):
    gql("mutation($u:String!,$p:String!){ register(username:$u, password:$p, role: TRADER){ userId } }",
        {"u": name, "p": f"{name}-password-123"})
    s = gql("mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token userId } }",
            {"u": name, "p": f"{name}-password-123"})["data"]["login"]
    return s["token"], s["userId"]


def portfolio(token):
    p = gql("{ portfolio { cashCents reservedCents holdings { symbol qty reservedQty } } }", token=token)
    return p["data"]["portfolio"]


def submit(token, coid, side, price, qty):
    q = """mutation($i:SubmitOrderInput!){ submitOrder(input:$i){ id status filledQty } }"""
    i = {"clientOrderId": coid, "symbol": "ACME", "side": side, "orderType": "LIMIT",
         "priceCents": str(price), "qty": str(qty)}
    return gql(q, {"i": i}, token=token)["data"]["submitOrder"]


EXECUTIONS = """subscription($after: Int64){ executions(afterCursor: $after){
  kind cursor orderId symbol fill { priceCents qty remaining } closed { reason } settledMatchSeq } }"""


MARKET_DATA = """subscription($s: [String!]!){ marketData(symbols: $s){
  symbol bidCents askCents trades { priceCents qty } } }"""


class Subscription:
    """One graphql-transport-ws connection with one subscription: the
    caller's `executions` (after a cursor), or with `query` another one."""

    def __init__(self, token, after=None, query=EXECUTIONS, variables=None, field="executions"):
        self.token, self.after = token, after
        self.query, self.variables, self.field = query, variables, field
        self.reports = []

    async def __aenter__(self):
        self.ws = await websockets.connect(WS_URL, subprotocols=["graphql-transport-ws"])
        check(self.ws.subprotocol == "graphql-transport-ws", "the server speaks graphql-transport-ws")
        await self.ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {self.token}"}}))
        ack = json.loads(await asyncio.wait_for(self.ws.recv(), 5))
        check(ack["type"] == "connection_ack", "connection_init is acknowledged")
        variables = self.variables or ({"after": str(self.after)} if self.after is not None else {})
        await self.ws.send(json.dumps({"id": "1", "type": "subscribe",
                                       "payload": {"query": self.query, "variables": variables}}))
        self.reader = asyncio.create_task(self.read())
        return self

    async def read(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "next":
                if msg["payload"].get("errors"):
                    self.reports.append({"error": msg["payload"]["errors"]})
                else:
                    self.reports.append(msg["payload"]["data"][self.field])
            elif msg["type"] == "ping":
                await self.ws.send(json.dumps({"type": "pong"}))

    async def until(self, what, pred, within=10.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            hits = [r for r in self.reports if pred(r)]
            if hits:
                return hits
            await asyncio.sleep(0.05)
        sys.exit(f"FAILED: no {what} within {within} s; reports: {self.reports}")

    def last_cursor(self):
        return max((int(r["cursor"]) for r in self.reports if "cursor" in r), default=0)

    async def __aexit__(self, *exc):
        self.reader.cancel()
        await self.ws.close()


def fills(order_id):
    return lambda r: r.get("kind") == "FILL" and r.get("orderId") == order_id


async def trading():
    alice, alice_id = session("alice")
    bob, bob_id = session("bob")
    check(alice_id != bob_id, "two users, two ids")
    gql('mutation{ deposit(requestId:"a-shares", symbol:"ACME", qty:"100"){ cashCents } }', token=alice)
    gql('mutation{ deposit(requestId:"b-cash", cents:"1000000"){ cashCents } }', token=bob)
    again = gql('mutation{ deposit(requestId:"b-cash", cents:"1000000"){ cashCents } }', token=bob)
    check(again["data"]["deposit"]["cashCents"] == "1000000", "a deposit retried with its request id counts once")
    me = gql("{ me { id role } }", token=bob)["data"]["me"]
    check(me == {"id": bob_id, "role": "TRADER"}, f"me is bob: {me}")

    market = Subscription(bob, query=MARKET_DATA, variables={"s": ["ACME"]}, field="marketData")
    async with Subscription(alice) as a_sub, Subscription(bob) as b_sub, market as md:
        await a_sub.until("opening report", lambda r: r.get("kind") == "OPENED")
        await b_sub.until("opening report", lambda r: r.get("kind") == "OPENED")
        sell = submit(alice, "a-1", "SELL", 10000, 10)
        buy = submit(bob, "b-1", "BUY", 10000, 10)
        check(sell["status"] == "ACCEPTED", f"alice's sell accepted: {sell}")
        a_fill = (await a_sub.until("alice's fill", fills(sell["id"])))[0]
        b_fill = (await b_sub.until("bob's fill", fills(buy["id"])))[0]
        check(a_fill["fill"] == {"priceCents": "10000", "qty": "10", "remaining": "0"}, f"alice's fill: {a_fill}")
        check(b_fill["fill"] == {"priceCents": "10000", "qty": "10", "remaining": "0"}, f"bob's fill: {b_fill}")
        check(isinstance(a_fill["cursor"], str) and int(a_fill["cursor"]) > 0, "a fill has a cursor (Int64 as a string)")
        await a_sub.until("alice's settlement", lambda r: r.get("kind") == "SETTLED")
        traded = await md.until("the trade in ACME's market data",
                                lambda u: {"priceCents": "10000", "qty": "10"} in (u.get("trades") or []))
        check(traded[0]["symbol"] == "ACME", f"marketData delivers the trade: {traded[0]}")
        alice_cursor = a_sub.last_cursor()

    # Alice is away: a second trade happens without her.
    async with Subscription(bob, after=None) as b_sub:
        await b_sub.until("opening report", lambda r: r.get("kind") == "OPENED")
        sell2 = submit(alice, "a-2", "SELL", 10100, 5)
        buy2 = submit(bob, "b-2", "BUY", 10100, 5)
        await b_sub.until("bob's second fill", fills(buy2["id"]))

    # She comes back after her last cursor: the missed fill, and not the first one again.
    async with Subscription(alice, after=alice_cursor) as a_sub:
        missed = await a_sub.until("the missed fill, replayed", fills(sell2["id"]))
        check(missed[0]["fill"] == {"priceCents": "10100", "qty": "5", "remaining": "0"}, f"replayed: {missed[0]}")
        check(not [r for r in a_sub.reports if fills(sell["id"])(r)], "the fill before the cursor is not replayed")

    # Balances, once settled: exact to the cent and the share.
    want_alice = {"cashCents": str(10 * 10000 + 5 * 10100), "reservedCents": "0",
                  "holdings": [{"symbol": "ACME", "qty": "85", "reservedQty": "0"}]}
    want_bob = {"cashCents": str(1000000 - 10 * 10000 - 5 * 10100), "reservedCents": "0",
                "holdings": [{"symbol": "ACME", "qty": "15", "reservedQty": "0"}]}
    deadline = time.monotonic() + 10
    while (portfolio(alice), portfolio(bob)) != (want_alice, want_bob) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    check(portfolio(alice) == want_alice, f"alice's portfolio {portfolio(alice)}")
    check(portfolio(bob) == want_bob, f"bob's portfolio {portfolio(bob)}")
    orders = gql("{ orders { id status filledQty } }", token=alice)["data"]["orders"]
    check(sorted(o["status"] for o in orders) == ["FILLED", "FILLED"], f"alice's orders: {orders}")
    return alice, bob


def hostile(alice, bob):
    resting = submit(alice, "a-rest", "SELL", 20000, 1)
    check(resting["status"] == "ACCEPTED", "a resting order to aim at")
    before = (portfolio(alice), portfolio(bob))

    deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } }"
    body = gql(deep, expect_errors=True)
    check("nested too deep" in json.dumps(body.get("errors")), f"deep nesting refused: {body.get('errors')}")

    aliases = "{ " + " ".join(f"a{i}: orders {{ id status }}" for i in range(300)) + " }"
    body = gql(aliases, token=bob, expect_errors=True)
    check("too complex" in json.dumps(body.get("errors")), f"aliases that multiply work refused: {body.get('errors')}")

    body = gql('{ candles(symbol:"ACME", limit: 100000000) { closeCents } }', token=bob, expect_errors=True)
    check(error_code(body) == "BAD_USER_INPUT", f"a huge list refused: {body.get('errors')}")

    body = gql("{ portfolio { nope } }", token=bob, expect_errors=True)
    messages = " ".join(e["message"] for e in body.get("errors") or [])
    check('Unknown field "nope"' in messages, f"an unknown field refused: {messages}")

    r = requests.post(URL, data='{"query": "{ portfolio { cashCents } ', headers={"content-type": "application/json"},
                      timeout=10)
    check(r.status_code == 400, f"malformed JSON is a 400 ({r.status_code} {r.text[:100]})")

    r = requests.post(URL, json={"query": "{ me { id } }", "variables": {"pad": "x" * 200_000}}, timeout=10)
    check(r.status_code == 413, f"an oversized body is a 413 ({r.status_code})")

    body = gql('mutation{ deposit(requestId:"overflow", cents:"99999999999999999999"){ cashCents } }', token=bob,
               expect_errors=True)
    check(body.get("data") is None and "64-bit" in json.dumps(body.get("errors")), f"an overflowing Int64 refused: {body}")
    body = gql('mutation{ deposit(requestId:"float", cents: 1.5){ cashCents } }', token=bob, expect_errors=True)
    check(body.get("data") is None and body.get("errors"), "a fractional amount refused")

    body = gql("{ portfolio { cashCents } }", expect_errors=True)
    check(error_code(body) == "UNAUTHENTICATED", f"no token: UNAUTHENTICATED ({body.get('errors')})")
    header, payload, signature = alice.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = 2  # bob
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    forged = f"{header}.{forged_payload}.{signature}"
    body = gql("{ portfolio { cashCents } }", token=forged, expect_errors=True)
    check(error_code(body) == "UNAUTHENTICATED", f"a forged token: UNAUTHENTICATED ({body.get('errors')})")
    body = gql('mutation{ deposit(requestId:"forged", cents:"5"){ cashCents } }', token=forged, expect_errors=True)
    check(error_code(body) == "UNAUTHENTICATED", "a forged token deposits nothing")

    body = gql("query($id:ID!){ order(id:$id){ id } }", {"id": resting["id"]}, token=bob, expect_errors=True)
    check(error_code(body) in ("NOT_FOUND", "PERMISSION_DENIED"), f"another user's order is not shown ({body})")
    body = gql("mutation($id:ID!){ cancelOrder(id:$id){ id status } }", {"id": resting["id"]}, token=bob,
               expect_errors=True)
    check(error_code(body) in ("NOT_FOUND", "PERMISSION_DENIED"), f"another user's order is not cancelled ({body})")
    still = gql("query($id:ID!){ order(id:$id){ status } }", {"id": resting["id"]}, token=alice)
    check(still["data"]["order"]["status"] == "ACCEPTED", "alice's order is still open")

    body = gql('{ __schema { queryType { name } subscriptionType { name } } }')
    check(body["data"]["__schema"]["subscriptionType"]["name"] == "Subscription", "introspection is on")

    check((portfolio(alice), portfolio(bob)) == before, "nothing hostile changed a balance")


async def main():
    alice, bob = await trading()
    hostile(alice, bob)
    print("graphql e2e: passed")


asyncio.run(main())
