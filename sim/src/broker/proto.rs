//! What a [`super::SimBus`] and the broker say to each other over a simulated
//! connection: `(request id, Request)` one way, `(request id, Reply)` the other.
//! A tail has a connection of its own, on which the broker sends the tail's
//! messages after its first reply.

use std::time::Duration;

use fafnir_platform::bus::{
    AckToken, BusError, ConsumerLag, ConsumerSpec, Delivery, PubAck, Publish, StoredMsg, StreamSpec,
};

use super::store::Settle;

#[derive(Debug)]
pub(super) enum Request {
    EnsureStream(StreamSpec),
    EnsureConsumer(ConsumerSpec),
    /// One publish (with its trace context header, if any).
    Publish(Publish),
    /// Publishes pipelined on one connection: stored in order, one result each.
    PublishBatch(Vec<Publish>),
    Fetch {
        stream: String,
        durable: String,
        max: usize,
        wait: Duration,
    },
    /// One way: the broker sends no reply.
    Settle {
        token: AckToken,
        how: Settle,
    },
    /// Acks several deliveries; one way too.
    AckMany(Vec<AckToken>),
    Read {
        stream: String,
        filter: String,
        from_seq: u64,
        max: usize,
        wait: Duration,
    },
    LastOnSubject {
        stream: String,
        subject: String,
    },
    LastSeq(String),
    ConsumerLag {
        stream: String,
        durable: String,
    },
    /// Opens a tail on this connection: the matching messages from `from_seq`
    /// on (stored ones first), or from the next publish on when `None`.
    Tail {
        stream: String,
        filter: String,
        from_seq: Option<u64>,
    },
}

#[derive(Debug)]
pub(super) enum Response {
    Done,
    PubAck(PubAck),
    PubAcks(Vec<Result<PubAck, BusError>>),
    /// A batch's acks of which some were lost (`None`; the `reply_lost`
    /// fault): the client hears nothing of those before its timeout.
    SomePubAcks(Vec<Option<Result<PubAck, BusError>>>),
    Deliveries(Vec<Delivery>),
    Msgs(Vec<StoredMsg>),
    Last(Option<StoredMsg>),
    LastSeq(u64),
    ConsumerLag(ConsumerLag),
    /// The tail is open; its first message will have at least this sequence.
    TailOpen {
        from_seq: u64,
    },
    /// The tail's next messages, in order: what was stored since the last
    /// frame, sent together (as a TCP connection coalesces what is queued).
    TailMsgs(Vec<StoredMsg>),
}

pub(super) type Reply = Result<Response, BusError>;

/// What travels one way on a connection.
pub(super) type RequestFrame = (u64, Request);
/// What travels the other way.
pub(super) type ReplyFrame = (u64, Reply);
