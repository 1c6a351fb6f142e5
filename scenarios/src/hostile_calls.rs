//! Sending a hostile agent's requests ([`HostileRequest`]) through the public
//! API and judging the answers: each must be refused, with a status that
//! names a fault of the request.

use std::collections::BTreeMap;

use fafnir_platform::domain::{order_id_for, UserId};
use fafnir_platform::proto::gateway::*;
use fafnir_platform::services::jwt;
use serde::{Deserialize, Serialize};
use tonic::{Code, Request, Status};

use crate::agents::HostileRequest;
use crate::client::Client;

/// What a hostile agent's requests met.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostileLog {
    /// Requests sent, by kind.
    pub sent: BTreeMap<String, u64>,
    /// Refused, as they must be.
    pub refused: u64,
    /// Unanswered (unavailable, timed out, cut off): proves nothing either way.
    pub unanswered: u64,
    /// Accepted, or failed the way no refusal does.
    pub violations_total: u64,
    /// The first few of those, one line each.
    pub violations: Vec<String>,
}

/// At most this many violations are kept word for word.
const VIOLATIONS_KEPT: usize = 10;

/// A status that refuses the request for what it is.
fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::AlreadyExists
            | Code::OutOfRange
            | Code::ResourceExhausted
    )
}

/// A status of the world, not of the request.
fn is_unanswered(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted | Code::Unknown)
}

impl HostileLog {
    /// No hostile request was sent.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    /// Counts what `request` met.
    pub fn record(&mut self, request: &HostileRequest, outcome: Result<(), Status>) {
        *self.sent.entry(request.kind().to_string()).or_default() += 1;
        let violation = match outcome {
            Err(s) if is_refusal(s.code()) => {
                self.refused += 1;
                return;
            }
            Err(s) if is_unanswered(s.code()) => {
                self.unanswered += 1;
                return;
            }
            Err(s) => format!("failed with {:?} ({})", s.code(), shorten(s.message())),
            Ok(()) => "accepted".to_string(),
        };
        self.violations_total += 1;
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(format!("{} {violation}: {}", request.kind(), describe(request)));
        }
    }

    /// Adds another agent's log to this one.
    pub fn merge(&mut self, other: &HostileLog) {
        for (kind, n) in &other.sent {
            *self.sent.entry(kind.clone()).or_default() += n;
        }
        self.refused += other.refused;
        self.unanswered += other.unanswered;
        self.violations_total += other.violations_total;
        let room = VIOLATIONS_KEPT.saturating_sub(self.violations.len());
        self.violations.extend(other.violations.iter().take(room).cloned());
    }
}

/// `text` cut to at most 160 characters.
fn shorten(text: &str) -> String {
    const MAX: usize = 160;
    if text.chars().count() <= MAX {
        return text.to_string();
    }
    let head: String = text.chars().take(MAX).collect();
    format!("{head}... ({} bytes)", text.len())
}

/// The request in a line, long strings cut short.
fn describe(r: &HostileRequest) -> String {
    shorten(&format!("{r:?}"))
}

fn authed<T>(c: &Client, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = &c.token {
        r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("an ascii token"));
    }
    r
}

/// Sends `request` as `c`; Ok when the platform accepted it.
pub async fn send(c: &Client, request: &HostileRequest) -> Result<(), Status> {
    let api = &mut c.api.clone();
    match request.clone() {
        HostileRequest::Submit { client_order_id, symbol, side, order_type, price_cents, qty } => {
            let m = SubmitOrderRequest { client_order_id, symbol, side, order_type, price_cents, qty };
            api.submit_order(authed(c, m)).await.map(drop)
        }
        HostileRequest::Deposit { cents, request_id, symbol, qty } => {
            api.deposit(authed(c, DepositRequest { cents, request_id, symbol, qty })).await.map(drop)
        }
        HostileRequest::CancelTheirs { victim, tag } => {
            if victim == c.user_id {
                // Its own order id: it has none, so a refusal all the same.
                return Err(Status::not_found("its own (no orders)"));
            }
            let order_id = order_id_for(UserId(victim), &format!("t{tag}")).0;
            api.cancel_order(authed(c, CancelOrderRequest { order_id })).await.map(drop)
        }
        HostileRequest::ForgedToken { victim } => {
            let claims = jwt::Claims { sub: victim, role: 1, exp: i64::MAX / 2 };
            let forged = jwt::issue("not the platform's key", &claims);
            let mut r = Request::new(GetPortfolioRequest {});
            r.metadata_mut().insert("authorization", format!("Bearer {forged}").parse().expect("an ascii token"));
            api.get_portfolio(r).await.map(drop)
        }
        HostileRequest::Login { username, password } => api.login(LoginRequest { username, password }).await.map(drop),
        HostileRequest::Quote { symbol } => api.get_quote(authed(c, GetQuoteRequest { symbol })).await.map(drop),
        HostileRequest::MarketData { symbols } => {
            api.stream_market_data(authed(c, StreamMarketDataRequest { symbols })).await.map(drop)
        }
    }
}
