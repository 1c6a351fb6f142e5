#!/usr/bin/env python3
"""Writes fafnir's Grafana dashboards (deploy/grafana/dashboards/*.json).

The JSON files are generated: edit this file, run it, commit both.

    python3 deploy/grafana/generate.py          # write the dashboards
    python3 deploy/grafana/generate.py --check  # exit 1 if a file is stale

Every query names only metrics that `fafnir up` (job `fafnir`) and a
`fafnir run --metrics-addr` load generator (job `fafnir-loadgen`) serve, and
`ci/test-prometheus` evaluates every one of them against a real Prometheus
that scraped a real run: a query that returns nothing fails CI. Some series
exist only once something happened (refusals, errors); the test provokes
them. A per-method error ratio is written `(errors or requests * 0) /
requests` so that no errors reads 0, not "No data".

Grafana's `$__rate_interval` is the only template variable used; the test
replaces it with a fixed window.
"""

import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "fafnir-prometheus"}
RI = "$__rate_interval"
OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
SERVICES = {
    "gateway": "fafnir.gateway.Gateway",
    "auth": "fafnir.auth.Auth",
    "market": "fafnir.market.Market",
    "orders": "fafnir.orders.Orders",
    "portfolio": "fafnir.portfolio.Portfolio",
}


# ---------------------------------------------------------------- panels


def target(expr, legend="", fmt=None):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend, "range": True}
    if fmt:
        t["format"] = fmt
    return t


def timeseries(title, targets, unit="short", desc="", w=12, h=8, stack=False):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    return {
        "type": "timeseries",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": custom}, "overrides": []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets,
    }


def stat(title, expr, unit="short", desc="", w=4, h=4, decimals=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
        "targets": [target(expr)],
    }


def heatmap(title, bucket_selector, desc="", w=12, h=8):
    """A latency heatmap of a Prometheus histogram (buckets as Grafana's y axis)."""
    expr = f"sum by (le) (increase({bucket_selector}[{RI}]))"
    return {
        "type": "heatmap",
        "title": title,
        "description": desc,
        "datasource": DS,
        "_size": (w, h),
        "fieldConfig": {"defaults": {"custom": {"scaleDistribution": {"type": "linear"}}}, "overrides": []},
        "options": {
            "calculate": False,
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "scale": "exponential", "exponent": 0.5,
                      "steps": 64, "reverse": False, "fill": "dark-orange"},
            "filterValues": {"le": 1e-9},
            "rowsFrame": {"layout": "auto"},
            "yAxis": {"axisPlacement": "left", "unit": "s", "reverse": False},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": False},
            "legend": {"show": True},
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
        },
        "targets": [target(expr, "{{le}}", fmt="heatmap")],
    }


def row(title, collapsed=False, panels=None):
    return {"type": "row", "title": title, "collapsed": collapsed, "_nested": panels or []}


def quantiles(histogram, by="", selector="", qs=(0.5, 0.99), label="", cumulative=False):
    """histogram_quantile targets over a rate of `histogram`_bucket, one per
    quantile; `cumulative`: over its counts since the process started."""
    keys = ", ".join(["le"] + ([by] if by else []))
    sel = "{" + selector + "}" if selector else ""
    out = []
    for q in qs:
        name = f"p{q * 100:g}"
        legend = f"{name} {label}{{{{{by}}}}}" if by else f"{name} {label}".strip()
        buckets = f"{histogram}_bucket{sel}" if cumulative else f"rate({histogram}_bucket{sel}[{RI}])"
        expr = f"histogram_quantile({q}, sum by ({keys}) ({buckets}))"
        out.append(target(expr, legend))
    return out


# ------------------------------------------------------------ dashboards


def layout(items):
    """Assigns ids and grid positions; panels fill 24 columns left to right.

    An open row is followed by its panels at the top level; a collapsed row
    holds them in its own `panels` (where Grafana puts them when it opens).
    """
    out = []
    ids = iter(range(1, 10_000))
    cursor = {"x": 0, "y": 0, "h": 0}

    def newline():
        cursor["y"] += cursor["h"]
        cursor["x"], cursor["h"] = 0, 0

    def put(p):
        p["id"] = next(ids)
        for i, t in enumerate(p.get("targets", [])):
            t["refId"] = chr(ord("A") + i)
        w, h = p.pop("_size")
        if cursor["x"] + w > 24:
            newline()
        p["gridPos"] = {"h": h, "w": w, "x": cursor["x"], "y": cursor["y"]}
        cursor["x"] += w
        cursor["h"] = max(cursor["h"], h)
        return p

    for item in items:
        if item["type"] != "row":
            out.append(put(item))
            continue
        nested = item.pop("_nested")
        item["_size"] = (24, 1)
        newline()
        out.append(put(item))
        newline()
        if item["collapsed"]:
            y = cursor["y"]
            item["panels"] = [put(p) for p in nested]
            newline()
            cursor["y"] = y
        else:
            item["panels"] = []
            out.extend(put(p) for p in nested)
    return out


def dashboard(uid, title, description, panels, time_from="now-15m"):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fafnir"],
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "5s",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": [{"type": "dashboards", "tags": ["fafnir"], "asDropdown": True, "title": "fafnir dashboards",
                   "includeVars": False, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": []},
        "panels": layout(panels),
    }


def grpc_section(short, service, sparse=False):
    """A service's gRPC panels: rate, error ratio and codes, latency percentiles.

    `sparse`: the service is called now and then (auth when a session starts,
    market when a client asks for a quote), so a windowed rate is mostly 0
    and its quantiles and ratios undefined; its error ratio and latency
    percentiles are then taken over every call since the process started.
    """
    s = f'grpc_service="{service}"'
    handled = f"grpc_server_handled_total{{{s}}}"
    errors = f'grpc_server_handled_total{{{s},grpc_code!="OK"}}'
    unary = f'{s},grpc_type="unary"'

    def per(x, by=""):
        grouped = f"sum by ({by}) " if by else "sum"
        return f"{grouped}({x})" if sparse else f"{grouped}(rate({x}[{RI}]))"

    since = " since start" if sparse else ""
    ratio_desc = "Calls answered with a code other than OK, as a share of all calls" + (
        ", over every call since the process started." if sparse else ".")
    return row(f"{short}: gRPC ({service})", panels=[
        stat("Requests/s", f"sum(rate({handled}[{RI}]))", unit="reqps", w=6),
        stat("Requests handled since start", f"sum({handled})", unit="short", w=6,
             desc="Every call this process has answered, whatever its code."),
        stat(f"Error ratio{since}", f"({per(errors)} or {per(handled)} * 0) / {per(handled)}",
             unit="percentunit", w=6, decimals=2, desc=ratio_desc),
        stat("p99 latency since start (unary)",
             f"histogram_quantile(0.99, sum by (le) (grpc_server_handling_seconds_bucket{{{unary}}}))",
             unit="s", w=6, desc="Over every unary call since the process started."),
        timeseries("Requests/s by method", [target(
            f"sum by (grpc_method) (rate({handled}[{RI}]))", "{{grpc_method}}")], unit="reqps"),
        timeseries("Responses/s by code", [target(f"sum by (grpc_code) (rate({handled}[{RI}]))", "{{grpc_code}}")],
                   unit="reqps", stack=True),
        timeseries(f"Error ratio by method{since}", [target(
            f"({per(errors, 'grpc_method')} or {per(handled, 'grpc_method')} * 0) / {per(handled, 'grpc_method')}",
            "{{grpc_method}}")], unit="percentunit", desc=ratio_desc),
        timeseries(f"Latency p50 / p99 by method{since} (unary)",
                   quantiles("grpc_server_handling_seconds", by="grpc_method", selector=unary, cumulative=sparse),
                   unit="s", desc="Handling time inside the service, from request to response" + (
                       ", over every call since the process started." if sparse else ".")),
    ])


def overview():
    submit = 'grpc_service="fafnir.gateway.Gateway",grpc_method="SubmitOrder"'
    return dashboard("fafnir-overview", "fafnir / platform overview",
                     "Orders, latency, errors, consumer and settlement lag, reservations of the whole platform.", [
        row("Orders", panels=[
            stat("Accepted orders/s", f"sum(rate(fafnir_orders_accepted_total[{RI}]))", unit="ops"),
            stat("Refused orders/s", f"sum(rate(fafnir_orders_rejected_total[{RI}]))", unit="ops"),
            stat("Orders in flight at the gateway", "sum(fafnir_gateway_orders_in_flight)"),
            stat("Resting orders", "sum(fafnir_book_depth_orders)", desc="Orders resting in every book."),
            stat("Settlement lag p99", f"histogram_quantile(0.99, sum by (le) "
                 f"(rate(fafnir_settlement_lag_seconds_bucket[{RI}])))", unit="s"),
            stat("Consumer lag (max)", "max(fafnir_consumer_lag_messages)",
                 desc="Messages the furthest-behind durable consumer has not acknowledged."),
            timeseries("Order rate", [
                target(f"sum by (symbol) (rate(fafnir_orders_accepted_total[{RI}]))", "accepted {{symbol}}"),
                target(f"sum by (reason) (rate(fafnir_orders_rejected_total[{RI}]))", "refused: {{reason}}"),
                target(f"sum by (outcome) (rate(fafnir_cancels_total[{RI}]))", "cancel {{outcome}}"),
            ], unit="ops"),
            heatmap("Submit → ack at the gateway (SubmitOrder handling time)",
                    f"grpc_server_handling_seconds_bucket{{{submit}}}"),
            timeseries("Submit → ack p50 / p99 (gateway)", quantiles("grpc_server_handling_seconds", selector=submit),
                       unit="s"),
            timeseries("Errors by gRPC code", [target(
                f'sum by (grpc_service, grpc_method, grpc_code) (rate(grpc_server_handled_total{{grpc_code!="OK"}}[{RI}]))',
                "{{grpc_method}} {{grpc_code}}")], unit="reqps",
                desc="Calls any service answered with a code other than OK (refusals included)."),
        ]),
        row("Trades, settlement, lag", panels=[
            timeseries("Fills and settlements/s", [
                target(f"sum(rate(fafnir_fills_total[{RI}]))", "fills"),
                target(f"sum(rate(fafnir_fills_settled_total[{RI}]))", "settled"),
            ], unit="ops"),
            timeseries("Settlement lag p50 / p99", quantiles("fafnir_settlement_lag_seconds"), unit="s",
                       desc="From a fill to its settlement in the portfolio."),
            timeseries("Consumer lag", [target("max by (stream, consumer) (fafnir_consumer_lag_messages)",
                                               "{{consumer}} ({{stream}})")], unit="short",
                       desc="max: the load generator of a run serves the same gauge."),
            timeseries("Gateway refusals/s by reason", [target(
                f"sum by (reason) (rate(fafnir_gateway_refusals_total[{RI}]))", "{{reason}}")], unit="ops"),
            timeseries("Reserved cash (cents)", [target("sum(fafnir_reservations_outstanding_cents)", "cents")]),
            timeseries("Reserved orders and shares", [
                target("sum(fafnir_reservations_outstanding_orders)", "orders"),
                target("sum by (symbol) (fafnir_reservations_outstanding_shares)", "shares {{symbol}}"),
            ]),
        ]),
        row("Infrastructure: NATS and Redis", collapsed=True, panels=[
            timeseries("NATS publishes/s by op", [target(
                f"sum by (op) (rate(fafnir_bus_publish_seconds_count[{RI}]))", "{{op}}")], unit="ops"),
            timeseries("NATS publish latency by op", quantiles("fafnir_bus_publish_seconds", by="op"), unit="s"),
            timeseries("Redis calls/s by op", [target(
                f"sum by (op) (rate(fafnir_redis_call_seconds_count[{RI}]))", "{{op}}")], unit="ops"),
            timeseries("Redis call latency by op", quantiles("fafnir_redis_call_seconds", by="op"), unit="s"),
        ]),
    ])


def gateway():
    s = 'grpc_service="fafnir.gateway.Gateway"'
    submit = f'{s},grpc_method="SubmitOrder"'
    return dashboard("fafnir-gateway", "fafnir / gateway", "The public API: every client call, refusals, streams.", [
        grpc_section("gateway", SERVICES["gateway"]),
        row("gateway: orders", panels=[
            stat("Orders in flight", "sum(fafnir_gateway_orders_in_flight)", w=6,
                 desc="Submits taken and not answered yet; beyond --max-orders-in-flight a submit is refused."),
            stat("Refusals/s", f"sum(rate(fafnir_gateway_refusals_total[{RI}]))", unit="ops", w=6),
            stat("Streams opened since start", f'sum(grpc_server_started_total{{{s},grpc_type="server_stream"}})', w=6,
                 desc="Executions and market-data subscriptions. A stream counts as handled once it is open, "
                      "so how many are still open is not in these series."),
            stat("Submits since start", f"sum(grpc_server_handled_total{{{submit}}})", w=6),
            heatmap("SubmitOrder handling time", f"grpc_server_handling_seconds_bucket{{{submit}}}"),
            timeseries("Orders in flight", [target("sum(fafnir_gateway_orders_in_flight)", "in flight")]),
            timeseries("Refusals/s by reason", [target(
                f"sum by (reason) (rate(fafnir_gateway_refusals_total[{RI}]))", "{{reason}}")], unit="ops"),
            timeseries("Errors/s by method and code", [target(
                f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{s},grpc_code!="OK"}}[{RI}]))',
                "{{grpc_method}} {{grpc_code}}")], unit="reqps"),
            timeseries("Streams opened/s by method", [target(
                f'sum by (grpc_method) (rate(grpc_server_started_total{{{s},grpc_type="server_stream"}}[{RI}]))',
                "{{grpc_method}}")], unit="ops", desc="Executions and market-data subscriptions opened."),
        ]),
    ])


def auth():
    return dashboard("fafnir-auth", "fafnir / auth", "Registrations and logins (JWTs).", [
        grpc_section("auth", SERVICES["auth"], sparse=True),
        row("auth: calls", panels=[
            timeseries("Calls since start by method and code", [target(
                'sum by (grpc_method, grpc_code) (grpc_server_handled_total{grpc_service="fafnir.auth.Auth"})',
                "{{grpc_method}} {{grpc_code}}")], w=24,
                desc="Auth is called when a session starts: its counts say more than its rate."),
        ]),
    ])


def market():
    return dashboard("fafnir-market", "fafnir / market", "Quotes and candles, and the trading they are drawn from.", [
        grpc_section("market", SERVICES["market"], sparse=True),
        row("market: books and trades", panels=[
            timeseries("Resting orders by symbol", [target("sum by (symbol) (fafnir_book_depth_orders)", "{{symbol}}")]),
            timeseries("Fills/s by symbol", [target(
                f"sum by (symbol) (rate(fafnir_fills_total[{RI}]))", "{{symbol}}")], unit="ops"),
        ]),
    ])


def orders():
    return dashboard("fafnir-orders", "fafnir / orders", "Order intake: accepted, refused, cancels, reservations.", [
        grpc_section("orders", SERVICES["orders"]),
        row("orders: intake", panels=[
            timeseries("Accepted orders/s by symbol", [target(
                f"sum by (symbol) (rate(fafnir_orders_accepted_total[{RI}]))", "{{symbol}}")], unit="ops"),
            timeseries("Refused orders/s by reason", [target(
                f"sum by (reason) (rate(fafnir_orders_rejected_total[{RI}]))", "{{reason}}")], unit="ops"),
            timeseries("Cancels/s by outcome", [target(
                f"sum by (outcome) (rate(fafnir_cancels_total[{RI}]))", "{{outcome}}")], unit="ops"),
            timeseries("Reserved orders", [target("sum(fafnir_reservations_outstanding_orders)", "orders")]),
            timeseries("Trades consumer lag (orders)", [target(
                'max by (stream) (fafnir_consumer_lag_messages{consumer="orders"})', "{{stream}}")]),
        ]),
    ])


def engine():
    return dashboard("fafnir-engine", "fafnir / engine",
                     "The matching engine shards: inputs, fills, books, what they publish.", [
        row("engine", panels=[
            stat("Inputs/s", f"sum(rate(fafnir_engine_inputs_total[{RI}]))", unit="ops", w=6),
            stat("Fills/s", f"sum(rate(fafnir_fills_total[{RI}]))", unit="ops", w=6),
            stat("Resting orders", "sum(fafnir_book_depth_orders)", w=6),
            stat("Fills since start", "sum(fafnir_fills_total)", w=6),
            timeseries("Inputs/s by symbol", [target(
                f"sum by (symbol) (rate(fafnir_engine_inputs_total[{RI}]))", "{{symbol}}")], unit="ops",
                desc="Submits and cancels the engine sequenced."),
            timeseries("Fills/s by symbol", [target(
                f"sum by (symbol) (rate(fafnir_fills_total[{RI}]))", "{{symbol}}")], unit="ops"),
            timeseries("Traded notional/s by symbol (cents)", [target(
                f"sum by (symbol) (rate(fafnir_fill_notional_cents_total[{RI}]))", "{{symbol}}")]),
            timeseries("Resting orders by symbol", [target("sum by (symbol) (fafnir_book_depth_orders)", "{{symbol}}")]),
            timeseries("NATS publish latency by op", quantiles("fafnir_bus_publish_seconds", by="op"), unit="s"),
            timeseries("NATS publishes/s by op", [target(
                f"sum by (op) (rate(fafnir_bus_publish_seconds_count[{RI}]))", "{{op}}")], unit="ops"),
        ]),
    ])


def portfolio():
    return dashboard("fafnir-portfolio", "fafnir / portfolio", "Cash and holdings: reservations and settlement.", [
        grpc_section("portfolio", SERVICES["portfolio"]),
        row("portfolio: settlement and reservations", panels=[
            timeseries("Fills settled/s", [target(f"sum(rate(fafnir_fills_settled_total[{RI}]))", "settled")],
                       unit="ops"),
            timeseries("Settlement lag p50 / p99", quantiles("fafnir_settlement_lag_seconds"), unit="s"),
            timeseries("Reserved cash (cents)", [target("sum(fafnir_reservations_outstanding_cents)", "cents")]),
            timeseries("Reserved shares by symbol", [target(
                "sum by (symbol) (fafnir_reservations_outstanding_shares)", "{{symbol}}")]),
            timeseries("Trades consumer lag (portfolio)", [target(
                'max by (stream) (fafnir_consumer_lag_messages{consumer="portfolio"})', "{{stream}}")]),
            timeseries("Redis call latency by op", quantiles("fafnir_redis_call_seconds", by="op"), unit="s"),
        ]),
    ])


def load():
    accepted = 'fafnir_loadgen_requests_total{op="submit",outcome="accepted"}'
    return dashboard("fafnir-load", "fafnir / load run",
                     "The load generator of a `fafnir run --metrics-addr` (job fafnir-loadgen): what it offered, "
                     "what the platform took, errors, per-stage latency. Its series exist only while a run runs.", [
        row("load generator", panels=[
            stat("Offered orders/s", f"sum(rate(fafnir_loadgen_orders_offered_total[{RI}]))", unit="ops"),
            stat("Accepted orders/s", f"sum(rate({accepted}[{RI}]))", unit="ops"),
            stat("Requests in flight", "sum(fafnir_loadgen_requests_in_flight)"),
            stat("Errors/s", f"sum(rate(fafnir_loadgen_errors_total[{RI}]))", unit="ops"),
            stat("Fills reported/s", f"sum(rate(fafnir_loadgen_fills_reported_total[{RI}]))", unit="ops"),
            stat("submit → ack p99", f'histogram_quantile(0.99, sum by (le) '
                 f'(rate(fafnir_loadgen_stage_seconds_bucket{{stage="submit_to_ack"}}[{RI}])))', unit="s"),
            timeseries("Offered vs achieved", [
                target(f"sum(rate(fafnir_loadgen_orders_offered_total[{RI}]))", "offered"),
                target(f'sum(rate(fafnir_loadgen_requests_total{{op="submit"}}[{RI}]))', "sent"),
                target(f"sum(rate({accepted}[{RI}]))", "accepted"),
                target(f"sum(rate(fafnir_orders_accepted_total[{RI}]))", "accepted (platform)"),
            ], unit="ops", desc="offered: what the agents meant to send; accepted: what the platform took."),
            timeseries("Requests in flight", [target("sum(fafnir_loadgen_requests_in_flight)", "in flight")]),
            timeseries("Requests/s by op and outcome", [target(
                f"sum by (op, outcome) (rate(fafnir_loadgen_requests_total[{RI}]))", "{{op}} {{outcome}}")],
                unit="reqps"),
            timeseries("Errors/s by op and code", [target(
                f"sum by (op, code) (rate(fafnir_loadgen_errors_total[{RI}]))", "{{op}} {{code}}")], unit="reqps",
                desc="Failed and timed-out requests, by gRPC code."),
            heatmap("submit → ack", 'fafnir_loadgen_stage_seconds_bucket{stage="submit_to_ack"}'),
            timeseries("Fills reported/s", [target(
                f"sum(rate(fafnir_loadgen_fills_reported_total[{RI}]))", "fills")], unit="ops"),
            timeseries("Stage latency p50", quantiles("fafnir_loadgen_stage_seconds", by="stage", qs=(0.5,)),
                       unit="s"),
            timeseries("Stage latency p99", quantiles("fafnir_loadgen_stage_seconds", by="stage", qs=(0.99,)),
                       unit="s"),
        ]),
    ], time_from="now-5m")


DASHBOARDS = {
    "overview": overview,
    "gateway": gateway,
    "auth": auth,
    "market": market,
    "orders": orders,
    "engine": engine,
    "portfolio": portfolio,
    "load": load,
}


def render():
    return {f"{name}.json": json.dumps(make(), indent=2, ensure_ascii=False) + "\n" for name, make in DASHBOARDS.items()}


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, text in render().items():
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for name in sorted(p.name for p in OUT.glob("*.json")):
        if name not in render():
            stale.append(f"{OUT / name} (no generator)")
    if stale:
        print("stale dashboards (run python3 deploy/grafana/generate.py):", *stale, sep="\n  ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
