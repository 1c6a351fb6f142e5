//! The GraphQL API's flow in both worlds: its schema (the same resolvers
//! `fafnir serve graphql` serves over HTTP and WebSocket) executed directly
//! against the platform's gateway, for real and, where no HTTP server can
//! be a node of madsim's world, in the simulation. Two users register,
//! deposit and cross orders; their `executions` subscriptions deliver the
//! fills; one drops its subscription, misses a trade and resumes after its
//! last cursor to get exactly what it missed; balances come out exact. The
//! HTTP and WebSocket transport is tested for real by `tests/graphql.rs`.

use std::time::Duration;

use async_graphql::Request;
use fafnir_platform::proto::gateway::gateway_client::GatewayClient;
use fafnir_platform::services::graphql::{schema, FafnirSchema, Limits, Token};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use crate::flows::eventually;
use crate::Platform;

async fn exec(s: &FafnirSchema, token: Option<&str>, query: &str, vars: Value) -> Value {
    let request =
        Request::new(query).variables(async_graphql::Variables::from_json(vars)).data(Token(token.map(String::from)));
    let r = s.execute(request).await;
    assert!(r.errors.is_empty(), "{query}: {:?}", r.errors);
    r.data.into_json().expect("json")
}

async fn session(s: &FafnirSchema, name: &str) -> String {
    let vars = json!({"u": name, "p": "correct horse battery"});
    exec(s, None, "mutation($u:String!,$p:String!){ register(username:$u, password:$p){ userId } }", vars.clone())
        .await;
    let login =
        exec(s, None, "mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token } }", vars).await;
    login["login"]["token"].as_str().expect("a token").to_string()
}

async fn submit(s: &FafnirSchema, token: &str, coid: &str, side: &str, price: i64, qty: i64) -> String {
    let input = json!({"clientOrderId": coid, "symbol": "ACME", "side": side, "orderType": "LIMIT",
                       "priceCents": price.to_string(), "qty": qty.to_string()});
    let q = "mutation($i:SubmitOrderInput!){ submitOrder(input:$i){ id status } }";
    let order = exec(s, Some(token), q, json!({"i": input})).await;
    assert_eq!(order["submitOrder"]["status"], "ACCEPTED", "{order}");
    order["submitOrder"]["id"].as_str().expect("an id").to_string()
}

type Reports = std::pin::Pin<Box<dyn Stream<Item = async_graphql::Response> + Send>>;

fn executions(s: &FafnirSchema, token: &str, after: Option<i64>) -> Reports {
    let q = "subscription($a:Int64){ executions(afterCursor:$a){ kind cursor orderId fill { priceCents qty } } }";
    let vars = json!({"a": after.map(|a| a.to_string())});
    let request = Request::new(q).variables(async_graphql::Variables::from_json(vars)).data(Token(Some(token.into())));
    Box::pin(s.execute_stream(request))
}

/// The next report of `reports` that satisfies `want`, and the largest cursor seen up to it.
async fn next_report(reports: &mut Reports, what: &str, want: impl Fn(&Value) -> bool) -> (Value, i64) {
    let mut cursor = 0;
    loop {
        let next = fafnir_platform::time::timeout(Duration::from_secs(10), reports.next()).await;
        let response = next.unwrap_or_else(|_| panic!("no {what} within 10 s")).expect("the subscription goes on");
        assert!(response.errors.is_empty(), "{what}: {:?}", response.errors);
        let report = response.data.into_json().expect("json")["executions"].clone();
        let c: i64 = report["cursor"].as_str().expect("Int64 as a string").parse().expect("a cursor");
        cursor = cursor.max(c);
        if want(&report) {
            return (report, cursor);
        }
    }
}

fn fill_of(order: &str, price: &str, qty: &str) -> impl Fn(&Value) -> bool {
    let (order, price, qty) = (order.to_string(), price.to_string(), qty.to_string());
    move |r: &Value| {
        r["kind"] == "FILL" && r["orderId"] == order.as_str() && r["fill"] == json!({"priceCents": price, "qty": qty})
    }
}

pub async fn graphql_users_trade_and_resume_their_executions(p: &dyn Platform) {
    let gateway = GatewayClient::new(fafnir_platform::services::channel(p.gateway(), Duration::from_secs(5)));
    let s = schema(gateway, Limits::DEFAULT);
    let (alice, bob) = (session(&s, "gql-alice").await, session(&s, "gql-bob").await);
    exec(&s, Some(&alice), r#"mutation{ deposit(requestId:"a", symbol:"ACME", qty:"100"){ cashCents } }"#, json!({}))
        .await;
    exec(&s, Some(&bob), r#"mutation{ deposit(requestId:"b", cents:"1000000"){ cashCents } }"#, json!({})).await;

    let mut a_reports = executions(&s, &alice, None);
    let mut b_reports = executions(&s, &bob, None);
    next_report(&mut a_reports, "alice's opening report", |r| r["kind"] == "OPENED").await;
    next_report(&mut b_reports, "bob's opening report", |r| r["kind"] == "OPENED").await;
    let sell = submit(&s, &alice, "a-1", "SELL", 10_000, 10).await;
    let buy = submit(&s, &bob, "b-1", "BUY", 10_000, 10).await;
    let (_, alice_cursor) = next_report(&mut a_reports, "alice's fill", fill_of(&sell, "10000", "10")).await;
    next_report(&mut b_reports, "bob's fill", fill_of(&buy, "10000", "10")).await;
    drop(a_reports);

    // Alice is away for the second trade; she resumes after her last cursor.
    let sell2 = submit(&s, &alice, "a-2", "SELL", 10_100, 5).await;
    let buy2 = submit(&s, &bob, "b-2", "BUY", 10_100, 5).await;
    next_report(&mut b_reports, "bob's second fill", fill_of(&buy2, "10100", "5")).await;
    let mut resumed = executions(&s, &alice, Some(alice_cursor));
    let (first_fill, _) = next_report(&mut resumed, "the missed fill", |r| r["kind"] == "FILL").await;
    assert!(
        fill_of(&sell2, "10100", "5")(&first_fill),
        "the first fill after the cursor is the missed one: {first_fill}"
    );

    let q = "{ portfolio { cashCents reservedCents holdings { symbol qty reservedQty } } }";
    let want_alice = json!({"portfolio": {"cashCents": "150500", "reservedCents": "0",
                            "holdings": [{"symbol": "ACME", "qty": "85", "reservedQty": "0"}]}});
    let want_bob = json!({"portfolio": {"cashCents": "849500", "reservedCents": "0",
                          "holdings": [{"symbol": "ACME", "qty": "15", "reservedQty": "0"}]}});
    eventually("both portfolios settled to the cent", || async {
        let (a, b) = (exec(&s, Some(&alice), q, json!({})).await, exec(&s, Some(&bob), q, json!({})).await);
        (a == want_alice && b == want_bob).then_some(())
    })
    .await;
}
