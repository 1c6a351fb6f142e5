//! Kv conformance cases: what the platform may rely on from its key-value
//! store, written once against the [`Kv`] trait and run against the simulated
//! Redis (`cargo sim test`) and a real redis-server (`cargo test`) by
//! `sim/tests/conformance/kv.rs`.
//!
//! Every key a case touches starts with the `prefix` it is given, so cases
//! share one server and run in parallel. Cases panic on the first difference.
//! The `concurrent_*` cases take several independent clients (connections) of
//! the same server: one connection's commands are applied in order whatever
//! the server does, so only commands from different connections can expose a
//! command that is not atomic.
//!
//! | semantics                                                        | case |
//! |------------------------------------------------------------------|------|
//! | GET of a missing key, SET, overwrite                             | [`get_set_and_overwrite`] |
//! | binary values (non-UTF-8, NUL) and empty values round-trip       | [`binary_and_empty_values`] |
//! | SET NX only when absent (a hash counts as present)               | [`set_nx_only_when_absent`] |
//! | DEL says whether the key existed, for strings and hashes         | [`del_says_whether_the_key_existed`] |
//! | INCRBY from 0, negative steps, decimal strings, overflow         | [`incr_by_counts_from_zero`] |
//! | INCRBY on anything but a strict decimal integer is an error      | [`incr_by_rejects_non_integers`] |
//! | HSET many fields, HGET, HGETALL ordered, last duplicate wins     | [`hset_hget_and_hgetall`] |
//! | HINCRBY from 0, on other fields, non-integer and overflow errors | [`hincr_by_counts_from_zero`] |
//! | WRONGTYPE for every string/hash mix-up; SET replaces any kind    | [`wrong_type_is_an_error`] |
//! | keys_with_prefix: literal prefix (glob characters), sorted, all  | [`keys_with_prefix_is_literal_and_sorted`] |
//! | 50 concurrent INCRBY / HINCRBY sum exactly, each sees its own    | [`concurrent_increments_sum_exactly`] |
//! | of 20 concurrent SET NX on one key exactly one wins              | [`concurrent_set_nx_has_one_winner`] |
//! | concurrent multi-field HSETs are never seen mixed                | [`concurrent_hsets_are_never_seen_mixed`] |
//! | a crash loses every key; the server works again                  | [`a_crash_loses_all_data`] |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use fafnir_platform::kv::{Kv, KvError};
use futures::future::join_all;

/// What a crash case needs beyond the [`Kv`]: a way to crash the server.
#[async_trait]
pub trait KvControl: Send + Sync {
    /// Kills the server the case's [`Kv`] talks to (without persistence, so
    /// its data is lost) and starts it again; returns once it accepts commands.
    async fn crash_and_restart(&self);
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Panics unless `result` is Redis's WRONGTYPE error.
#[track_caller]
fn assert_wrongtype<T: Debug>(result: Result<T, KvError>, what: &str) {
    match result {
        Err(KvError::Other(message)) if message.contains("WRONGTYPE") => {}
        other => panic!("{what}: want a WRONGTYPE error, got {other:?}"),
    }
}

/// Panics unless `result` is an error reply of the server (not a lost connection).
#[track_caller]
fn assert_other_error<T: Debug>(result: Result<T, KvError>, what: &str) -> String {
    match result {
        Err(KvError::Other(message)) => message,
        other => panic!("{what}: want an error reply, got {other:?}"),
    }
}

pub async fn get_set_and_overwrite(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}str");
    assert_eq!(kv.get(&key).await.unwrap(), None, "a missing key");
    kv.set(&key, b("one")).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("one")));
    kv.set(&key, b("two, longer")).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("two, longer")), "SET overwrites");
    kv.set(&key, b("3")).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("3")), "a shorter value replaces the whole value");
    let other = format!("{prefix}str2");
    assert_eq!(kv.get(&other).await.unwrap(), None, "keys are independent");
    let unicode = format!("{prefix}ключ 鍵 🔑");
    kv.set(&unicode, b("ü")).await.unwrap();
    assert_eq!(kv.get(&unicode).await.unwrap(), Some(b("ü")), "unicode keys");
}

pub async fn binary_and_empty_values(kv: &dyn Kv, prefix: &str) {
    let binary = Bytes::from_static(b"\x00\xff\xfe\x80 \r\n\x00bin\xc3\x28");
    assert!(std::str::from_utf8(&binary).is_err());
    let key = format!("{prefix}bin");
    kv.set(&key, binary.clone()).await.unwrap();
    assert_eq!(kv.get(&key).await.unwrap(), Some(binary.clone()), "non-UTF-8 bytes round-trip");

    let empty = format!("{prefix}empty");
    kv.set(&empty, Bytes::new()).await.unwrap();
    assert_eq!(kv.get(&empty).await.unwrap(), Some(Bytes::new()), "an empty value is a value, not a missing key");
    assert!(!kv.set_nx(&empty, b("x")).await.unwrap(), "a key holding an empty value exists");

    let hash = format!("{prefix}binhash");
    kv.hset(&hash, &[("bin", binary.clone()), ("empty", Bytes::new())]).await.unwrap();
    assert_eq!(kv.hget(&hash, "bin").await.unwrap(), Some(binary.clone()));
    assert_eq!(kv.hget(&hash, "empty").await.unwrap(), Some(Bytes::new()), "an empty field value is present");
    let all = kv.hgetall(&hash).await.unwrap();
    assert_eq!(all, BTreeMap::from([("bin".to_string(), binary), ("empty".to_string(), Bytes::new())]));
}

pub async fn set_nx_only_when_absent(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}nx");
    assert!(kv.set_nx(&key, b("first")).await.unwrap(), "absent: set");
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("first")));
    assert!(!kv.set_nx(&key, b("second")).await.unwrap(), "present: not set");
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("first")), "a refused SET NX changes nothing");
    assert!(kv.del(&key).await.unwrap());
    assert!(kv.set_nx(&key, b("third")).await.unwrap(), "absent again after DEL");
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("third")));

    let hash = format!("{prefix}nxhash");
    kv.hset(&hash, &[("f", b("v"))]).await.unwrap();
    assert!(!kv.set_nx(&hash, b("s")).await.unwrap(), "a hash key is present too");
    assert_eq!(kv.hget(&hash, "f").await.unwrap(), Some(b("v")), "and keeps its fields");
}

pub async fn del_says_whether_the_key_existed(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}del");
    assert!(!kv.del(&key).await.unwrap(), "DEL of a missing key");
    kv.set(&key, b("v")).await.unwrap();
    assert!(kv.del(&key).await.unwrap(), "DEL of a string");
    assert_eq!(kv.get(&key).await.unwrap(), None, "gone after DEL");
    assert!(!kv.del(&key).await.unwrap(), "a second DEL finds nothing");

    let hash = format!("{prefix}delhash");
    kv.hset(&hash, &[("a", b("1")), ("b", b("2"))]).await.unwrap();
    assert!(kv.del(&hash).await.unwrap(), "DEL of a hash");
    assert_eq!(kv.hgetall(&hash).await.unwrap(), BTreeMap::new(), "the whole hash is gone");
    assert_eq!(kv.hget(&hash, "a").await.unwrap(), None);
    assert_eq!(kv.keys_with_prefix(&format!("{prefix}del")).await.unwrap(), Vec::<String>::new());

    let counter = format!("{prefix}delcounter");
    assert_eq!(kv.incr_by(&counter, 5).await.unwrap(), 5);
    assert!(kv.del(&counter).await.unwrap());
    assert_eq!(kv.incr_by(&counter, 5).await.unwrap(), 5, "a deleted counter starts again at 0");
}

pub async fn incr_by_counts_from_zero(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}counter");
    assert_eq!(kv.incr_by(&key, 5).await.unwrap(), 5, "a missing key counts as 0");
    assert_eq!(kv.incr_by(&key, 10).await.unwrap(), 15);
    assert_eq!(kv.incr_by(&key, -20).await.unwrap(), -5, "negative steps, below zero");
    assert_eq!(kv.incr_by(&key, 0).await.unwrap(), -5);
    assert_eq!(kv.get(&key).await.unwrap(), Some(b("-5")), "a counter is a decimal string");

    let set = format!("{prefix}counter-set");
    kv.set(&set, b("41")).await.unwrap();
    assert_eq!(kv.incr_by(&set, 1).await.unwrap(), 42, "a SET decimal string counts");
    kv.set(&set, b("-9223372036854775807")).await.unwrap();
    assert_eq!(kv.incr_by(&set, -1).await.unwrap(), i64::MIN, "down to i64::MIN");
    assert_eq!(kv.get(&set).await.unwrap(), Some(b("-9223372036854775808")));
    assert_other_error(kv.incr_by(&set, -1).await, "below i64::MIN");
    assert_eq!(kv.get(&set).await.unwrap(), Some(b("-9223372036854775808")), "an overflow changes nothing");

    let max = format!("{prefix}counter-max");
    assert_eq!(kv.incr_by(&max, i64::MAX).await.unwrap(), i64::MAX);
    let message = assert_other_error(kv.incr_by(&max, 1).await, "above i64::MAX");
    assert!(message.contains("overflow"), "{message}");
    assert_eq!(kv.incr_by(&max, -1).await.unwrap(), i64::MAX - 1, "still a counter after the refused overflow");
}

pub async fn incr_by_rejects_non_integers(kv: &dyn Kv, prefix: &str) {
    let not_integers: [&[u8]; 13] = [
        b"abc",
        b"",
        b"1.5",
        b" 1",
        b"1 ",
        b"+1",
        b"01",
        b"-0",
        b"-",
        b"0x10",
        b"9223372036854775808",
        b"\xff\x01",
        b"1e3",
    ];
    for (i, value) in not_integers.iter().enumerate() {
        let key = format!("{prefix}nan{i}");
        let value = Bytes::copy_from_slice(value);
        kv.set(&key, value.clone()).await.unwrap();
        let message = assert_other_error(kv.incr_by(&key, 1).await, &format!("INCRBY on {value:?}"));
        assert!(message.contains("not an integer"), "{value:?}: {message}");
        assert_eq!(kv.get(&key).await.unwrap(), Some(value.clone()), "a refused INCRBY changes nothing ({value:?})");
    }
    // And the strict forms that are integers.
    for (i, (value, want)) in [("0", 1), ("-1", 0), ("9223372036854775806", i64::MAX)].into_iter().enumerate() {
        let key = format!("{prefix}int{i}");
        kv.set(&key, b(value)).await.unwrap();
        assert_eq!(kv.incr_by(&key, 1).await.unwrap(), want, "INCRBY on {value:?}");
    }
}

pub async fn hset_hget_and_hgetall(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}hash");
    assert_eq!(kv.hgetall(&key).await.unwrap(), BTreeMap::new(), "HGETALL of a missing key");
    assert_eq!(kv.hget(&key, "f").await.unwrap(), None, "HGET of a missing key");

    // Given out of order: HGETALL is ordered by field.
    let fields = [
        ("zeta", b("26")),
        ("alpha", b("1")),
        ("Mu", b("12")),
        ("beta", b("2")),
        ("", b("empty name")),
        ("a:b", b("colon")),
    ];
    kv.hset(&key, &fields).await.unwrap();
    let all = kv.hgetall(&key).await.unwrap();
    let names: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(names, ["", "Mu", "a:b", "alpha", "beta", "zeta"], "ordered by field");
    for (field, value) in &fields {
        assert_eq!(all.get(*field), Some(value), "field {field:?}");
        assert_eq!(kv.hget(&key, field).await.unwrap(), Some(value.clone()), "HGET {field:?}");
    }
    assert_eq!(kv.hget(&key, "missing").await.unwrap(), None, "HGET of a missing field");

    // Overwrites one field, adds one, keeps the rest.
    kv.hset(&key, &[("alpha", b("one")), ("gamma", b("3"))]).await.unwrap();
    let all = kv.hgetall(&key).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all["alpha"], b("one"));
    assert_eq!(all["gamma"], b("3"));
    assert_eq!(all["zeta"], b("26"), "untouched fields stay");

    // A field named twice in one HSET keeps the last value.
    let dup = format!("{prefix}hashdup");
    kv.hset(&dup, &[("f", b("first")), ("g", b("g")), ("f", b("last"))]).await.unwrap();
    assert_eq!(
        kv.hgetall(&dup).await.unwrap(),
        BTreeMap::from([("f".to_string(), b("last")), ("g".to_string(), b("g"))])
    );

    // An HSET without fields is an error and creates nothing.
    let none = format!("{prefix}hashnone");
    assert_other_error(kv.hset(&none, &[]).await, "HSET without fields");
    assert_eq!(kv.keys_with_prefix(&none).await.unwrap(), Vec::<String>::new());
}

pub async fn hincr_by_counts_from_zero(kv: &dyn Kv, prefix: &str) {
    let key = format!("{prefix}hcounter");
    assert_eq!(kv.hincr_by(&key, "a", 3).await.unwrap(), 3, "a missing key counts as 0");
    assert_eq!(kv.hincr_by(&key, "a", -10).await.unwrap(), -7);
    assert_eq!(kv.hincr_by(&key, "b", 1).await.unwrap(), 1, "a missing field counts as 0");
    assert_eq!(kv.hget(&key, "a").await.unwrap(), Some(b("-7")), "a counter field is a decimal string");
    assert_eq!(
        kv.hgetall(&key).await.unwrap(),
        BTreeMap::from([("a".to_string(), b("-7")), ("b".to_string(), b("1"))])
    );

    kv.hset(&key, &[("name", b("acme")), ("qty", b("100")), ("padded", b(" 1")), ("lead", b("01"))]).await.unwrap();
    assert_eq!(kv.hincr_by(&key, "qty", 5).await.unwrap(), 105, "an HSET decimal string counts");
    for field in ["name", "padded", "lead"] {
        let message = assert_other_error(kv.hincr_by(&key, field, 1).await, &format!("HINCRBY on field {field}"));
        assert!(message.contains("not an integer"), "{field}: {message}");
    }
    assert_eq!(kv.hget(&key, "name").await.unwrap(), Some(b("acme")), "a refused HINCRBY changes nothing");

    assert_eq!(kv.hincr_by(&key, "big", i64::MAX).await.unwrap(), i64::MAX);
    let message = assert_other_error(kv.hincr_by(&key, "big", 1).await, "HINCRBY above i64::MAX");
    assert!(message.contains("overflow"), "{message}");
    assert_eq!(kv.hget(&key, "big").await.unwrap(), Some(b("9223372036854775807")));
    assert_eq!(kv.hincr_by(&key, "big", i64::MIN).await.unwrap(), -1);
    assert_eq!(kv.hgetall(&key).await.unwrap().len(), 7, "fields a, b, name, qty, padded, lead, big");
}

pub async fn wrong_type_is_an_error(kv: &dyn Kv, prefix: &str) {
    let string = format!("{prefix}a-string");
    let hash = format!("{prefix}a-hash");
    kv.set(&string, b("7")).await.unwrap();
    kv.hset(&hash, &[("f", b("7"))]).await.unwrap();

    assert_wrongtype(kv.get(&hash).await, "GET of a hash");
    assert_wrongtype(kv.incr_by(&hash, 1).await, "INCRBY of a hash");
    assert_wrongtype(kv.hget(&string, "f").await, "HGET of a string");
    assert_wrongtype(kv.hgetall(&string).await, "HGETALL of a string");
    assert_wrongtype(kv.hset(&string, &[("f", b("v"))]).await, "HSET on a string");
    assert_wrongtype(kv.hincr_by(&string, "f", 1).await, "HINCRBY on a string");
    assert_eq!(kv.get(&string).await.unwrap(), Some(b("7")), "the string is unchanged");
    assert_eq!(kv.hgetall(&hash).await.unwrap(), BTreeMap::from([("f".to_string(), b("7"))]), "the hash is unchanged");

    // SET replaces whatever the key held, a hash included.
    kv.set(&hash, b("now a string")).await.unwrap();
    assert_eq!(kv.get(&hash).await.unwrap(), Some(b("now a string")));
    assert_wrongtype(kv.hget(&hash, "f").await, "HGET of a hash replaced by SET");
    // And after DEL a key can hold the other kind.
    assert!(kv.del(&string).await.unwrap());
    kv.hset(&string, &[("g", b("1"))]).await.unwrap();
    assert_eq!(kv.hget(&string, "g").await.unwrap(), Some(b("1")));
}

pub async fn keys_with_prefix_is_literal_and_sorted(kv: &dyn Kv, prefix: &str) {
    // A sub-prefix full of glob characters, which must match only literally.
    let glob = format!("{prefix}g*?[ab]\\-");
    let wanted =
        [glob.clone(), format!("{glob}1"), format!("{glob}2:hash"), format!("{glob}\u{e9}"), format!("{glob}~")];
    let decoys = [
        format!("{prefix}gXY?[ab]\\-1"), // `*` as a glob
        format!("{prefix}g*Q[ab]\\-1"),  // `?` as a glob
        format!("{prefix}g*?a\\-1"),     // `[ab]` as a class
        format!("{prefix}g*?[ab]-1"),    // `\` as an escape
        format!("{prefix}g*?[ab]\\"),    // the prefix minus its last character
        format!("{prefix}G*?[ab]\\-1"),  // case matters
        format!("{prefix}x{glob}"),      // the prefix, but not at the start
    ];
    // Written in an unsorted order.
    for key in wanted.iter().rev().chain(&decoys) {
        if key.ends_with(":hash") {
            kv.hset(key, &[("f", b("v"))]).await.unwrap();
        } else {
            kv.set(key, b("v")).await.unwrap();
        }
    }
    let mut sorted = wanted.to_vec();
    sorted.sort();
    assert_eq!(kv.keys_with_prefix(&glob).await.unwrap(), sorted, "literal matches of every kind, sorted");
    assert_eq!(kv.keys_with_prefix(&format!("{prefix}nothing-here")).await.unwrap(), Vec::<String>::new());

    // The case's whole namespace: every key, exactly once.
    let mut everything: Vec<String> = wanted.iter().chain(&decoys).cloned().collect();
    let many: Vec<String> = (0..300).map(|i| format!("{prefix}many:{i:03}")).collect();
    join_all(many.iter().map(|key| kv.set(key, b("m")))).await.into_iter().for_each(|r| r.unwrap());
    everything.extend(many.iter().cloned());
    everything.sort();
    assert_eq!(kv.keys_with_prefix(prefix).await.unwrap(), everything, "all keys, none twice");
    assert_eq!(kv.keys_with_prefix(&format!("{prefix}many:")).await.unwrap(), many, "many:000 … many:299");

    assert!(kv.del(&wanted[1]).await.unwrap());
    let mut remaining = sorted.clone();
    remaining.retain(|k| *k != wanted[1]);
    assert_eq!(kv.keys_with_prefix(&glob).await.unwrap(), remaining, "a deleted key is not listed");
}

/// Panics unless there are several clients: atomicity is about commands from
/// different connections (one connection's commands are applied in order anyway).
fn assert_several(clients: &[&dyn Kv]) {
    assert!(clients.len() >= 2, "a concurrency case needs independent clients, got {}", clients.len());
}

pub async fn concurrent_increments_sum_exactly(clients: &[&dyn Kv], prefix: &str) {
    assert_several(clients);
    const TASKS: i64 = 50;
    let client = |i: i64| clients[i as usize % clients.len()];
    let counter = format!("{prefix}sum");
    let seen = join_all((0..TASKS).map(|i| client(i).incr_by(&counter, 1))).await;
    let seen: BTreeSet<i64> = seen.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(seen, (1..=TASKS).collect(), "each INCRBY sees its own value: no lost update");
    assert_eq!(client(0).get(&counter).await.unwrap(), Some(Bytes::from(TASKS.to_string())));

    let hash = format!("{prefix}hsum");
    let seen = join_all((1..=TASKS).map(|i| client(i).hincr_by(&hash, "total", i))).await;
    let seen: BTreeSet<i64> = seen.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(seen.len(), TASKS as usize, "each HINCRBY sees its own value: {seen:?}");
    let total = TASKS * (TASKS + 1) / 2;
    assert_eq!(seen.last(), Some(&total), "the last HINCRBY sees the sum");
    assert_eq!(client(1).hget(&hash, "total").await.unwrap(), Some(Bytes::from(total.to_string())));

    // Mixed: increments on many fields and the plain counter at once.
    let mixed = join_all((0..TASKS).map(|i| {
        let (hash, counter) = (&hash, &counter);
        async move {
            client(i).hincr_by(hash, &format!("f{}", i % 5), 2).await.unwrap();
            client(i + 1).incr_by(counter, -1).await.unwrap()
        }
    }))
    .await;
    assert_eq!(mixed.into_iter().collect::<BTreeSet<i64>>(), (0..TASKS).collect());
    let all = client(0).hgetall(&hash).await.unwrap();
    for f in 0..5 {
        assert_eq!(all[&format!("f{f}")], b("20"), "field f{f}");
    }
}

pub async fn concurrent_set_nx_has_one_winner(clients: &[&dyn Kv], prefix: &str) {
    assert_several(clients);
    for round in 0..5 {
        let key = format!("{prefix}nxrace{round}");
        let wins = join_all((0..20).map(|i| clients[i % clients.len()].set_nx(&key, Bytes::from(i.to_string())))).await;
        let winners: Vec<usize> =
            wins.into_iter().enumerate().filter_map(|(i, won)| won.unwrap().then_some(i)).collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        assert_eq!(
            clients[0].get(&key).await.unwrap(),
            Some(Bytes::from(winners[0].to_string())),
            "the winner's value stays"
        );
    }
}

pub async fn concurrent_hsets_are_never_seen_mixed(clients: &[&dyn Kv], prefix: &str) {
    assert_several(clients);
    const FIELDS: usize = 8;
    const ROUNDS: usize = 25;
    let key = format!("{prefix}versions");
    let names: Vec<String> = (0..FIELDS).map(|i| format!("field{i}")).collect();
    let version = |v: &str| -> Vec<(&str, Bytes)> {
        names.iter().map(|n| (n.as_str(), Bytes::from(format!("{v}:{n}")))).collect()
    };
    let (a, b_) = (version("a"), version("b"));
    clients[0].hset(&key, &a).await.unwrap();
    let whole = |seen: &BTreeMap<String, Bytes>| -> Option<char> {
        let tag = seen.values().next()?.first().copied()? as char;
        let want: BTreeMap<String, Bytes> =
            names.iter().map(|n| (n.clone(), Bytes::from(format!("{tag}:{n}")))).collect();
        (*seen == want).then_some(tag)
    };

    // Writes and reads interleaved over all clients, all in flight at once.
    let seen = join_all((0..ROUNDS * 3).map(|i| {
        let (a, b_, key) = (&a, &b_, &key);
        let kv = clients[i % clients.len()];
        async move {
            match i % 3 {
                0 => kv.hset(key, if i % 2 == 0 { b_ } else { a }).await.map(|()| None),
                _ => kv.hgetall(key).await.map(Some),
            }
        }
    }))
    .await;
    let mut tags = BTreeSet::new();
    for seen in seen.into_iter().filter_map(|r| r.unwrap()) {
        let tag = whole(&seen).unwrap_or_else(|| panic!("an HGETALL saw a mix of versions: {seen:?}"));
        tags.insert(tag);
    }
    assert_eq!(tags, BTreeSet::from(['a', 'b']), "the readers saw both versions, whole");
    let last = clients[1].hgetall(&key).await.unwrap();
    assert!(whole(&last).is_some(), "the final hash is one whole version: {last:?}");
}

pub async fn a_crash_loses_all_data(kv: &dyn Kv, prefix: &str, ctl: &dyn KvControl) {
    let string = format!("{prefix}crash:string");
    let hash = format!("{prefix}crash:hash");
    let counter = format!("{prefix}crash:counter");
    kv.set(&string, b("before")).await.unwrap();
    kv.hset(&hash, &[("a", b("1")), ("b", b("2"))]).await.unwrap();
    assert_eq!(kv.incr_by(&counter, 7).await.unwrap(), 7);
    assert_eq!(kv.keys_with_prefix(prefix).await.unwrap().len(), 3);

    ctl.crash_and_restart().await;

    assert_eq!(kv.keys_with_prefix(prefix).await.unwrap(), Vec::<String>::new(), "no key survives a crash");
    assert_eq!(kv.get(&string).await.unwrap(), None);
    assert_eq!(kv.hgetall(&hash).await.unwrap(), BTreeMap::new());
    assert_eq!(kv.hget(&hash, "a").await.unwrap(), None);
    assert!(!kv.del(&string).await.unwrap());
    assert_eq!(kv.incr_by(&counter, 7).await.unwrap(), 7, "a counter starts again at 0");
    assert!(kv.set_nx(&string, b("after")).await.unwrap(), "SET NX succeeds: the key is gone");
    kv.hset(&hash, &[("c", b("3"))]).await.unwrap();
    assert_eq!(
        kv.hgetall(&hash).await.unwrap(),
        BTreeMap::from([("c".to_string(), b("3"))]),
        "only what was written after"
    );
    assert_eq!(kv.get(&string).await.unwrap(), Some(b("after")));
}
