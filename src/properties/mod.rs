//! Property tests (proptest) of every parser of outside input: the JSON-RPC request and response
//! handling on both sides and the bearer-token check ([`rpc`]), host reports as the controller
//! reads them ([`reports`]), domain metadata files ([`metadata`]); the simulator's control bodies
//! are checked beside their parser in [`crate::agent::sim`], and the planner's properties live in
//! `src/plan/tests/properties.rs`. Each parser is fed arbitrary bytes and structure-aware input
//! (valid messages with one field replaced, huge numbers, deep nesting, very long strings) and
//! must answer with a clear, bounded error: no panic, no stack overflow, no allocation sized by a
//! number the input declares.
//!
//! Case counts are fixed and small ([`config`]) so `cargo test` (and `make test`) stays fast.
//! Run longer by setting `PROPTEST_CASES`, which overrides every count (the properties that build
//! megabyte inputs are the slow ones):
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release --lib properties agent::sim
//! ```
//!
//! A failure prints the shrunk input and is saved under `proptest-regressions/`; commit that file
//! so the case is replayed first from then on.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Value};

mod metadata;
mod reports;
mod rpc;

/// The proptest configuration of a property: `cases` cases, unless `PROPTEST_CASES` asks for
/// another count (the longer runs of the module docs).
pub(crate) fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Arbitrary JSON values, a few levels deep, with the awkward leaves: huge and negative numbers,
/// floats, empty and long strings, uuids and names the parsers look for.
pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just(i64::MIN),
            Just(i64::MAX),
            Just(-1),
            Just(0),
            Just(1),
            Just(2000),
            Just(2001),
        ]
        .prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Strings a parser may meet: short arbitrary text, uuids (valid and nearly), known words, and
/// long runs (the properties that need megabytes build them themselves).
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,12}",
        2 => "[0-9a-fA-F-]{30,40}",
        1 => Just("5849b030-626e-47cb-ad90-3ce782d831b3".to_owned()),
        1 => Just("5849B030-626E-47CB-AD90-3CE782D831B3".to_owned()),
        1 => Just("{5849b030-626e-47cb-ad90-3ce782d831b3}".to_owned()),
        1 => prop::sample::select(vec!["active", "Active", "attached", "ATTACHED", "2.0", ""])
            .prop_map(str::to_owned),
        1 => (0usize..5_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

/// Object keys: the field names the parsers know, and others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "jsonrpc", "method", "params", "id", "result", "error", "code", "message",
            "storagepoolID", "hostID", "scsiKey", "masterSdUUID", "masterVersion", "domainDict",
            "storageDomains", "lastCheck", "delay", "valid", "uuid", "pool", "domains",
            "domainMap", "hostId", "bootId", "kind", "seconds", "hosts", "millis",
        ])
        .prop_map(str::to_owned),
        1 => "\\PC{0,8}",
    ]
}

/// Raw bodies: arbitrary bytes, text around JSON's special characters, deep nesting (arrays,
/// objects, unterminated), and numbers no type can hold.
pub(crate) fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..256),
        2 => "[\\[\\]{}\":,0-9a-z\\\\ .eE+-]{0,200}".prop_map(String::into_bytes),
        1 => (0usize..100_000, 0u8..4).prop_map(|(depth, shape)| nested(depth, shape)),
        1 => prop::sample::select(vec![
            "1e999999", "-1e999999", "18446744073709551616", "-9223372036854775809",
            "0.0000000000000000000000000000001e-400", "\"\\ud800\"", "\"\\u0000\"", "\u{feff}{}",
            "{\"a\":1,\"a\":2}", "", " ", "null", "[]",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

/// `depth` levels of nesting: `[[[...]]]`, `{"a":{"a":...}}`, or either left open.
pub(crate) fn nested(depth: usize, shape: u8) -> Vec<u8> {
    let (open, close): (&[u8], &[u8]) = if shape.is_multiple_of(2) {
        (b"[", b"]")
    } else {
        (b"{\"a\":", b"}")
    };
    let mut out = Vec::with_capacity(depth * (open.len() + close.len()) + 1);
    for _ in 0..depth {
        out.extend_from_slice(open);
    }
    out.push(b'1');
    if shape < 2 {
        for _ in 0..depth {
            out.extend_from_slice(close);
        }
    }
    out
}

/// `base` with the value at one of its (nested) object keys replaced by `with`, chosen by `pick`;
/// or with a new key when `pick` points past the keys.
pub(crate) fn mutate(base: &Value, pick: usize, with: Value) -> Value {
    let mut out = base.clone();
    let mut paths = Vec::new();
    collect_paths(&out, &mut Vec::new(), &mut paths);
    match paths.get(pick % (paths.len() + 1)) {
        Some(path) => {
            if let Some(slot) = path.iter().try_fold(&mut out, |v, k| v.get_mut(k)) {
                *slot = with;
            }
        }
        None => {
            if let Value::Object(obj) = &mut out {
                obj.insert("extra".to_owned(), with);
            }
        }
    }
    out
}

fn collect_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(obj) = v {
        for (k, child) in obj {
            prefix.push(k.clone());
            out.push(prefix.clone());
            collect_paths(child, prefix, out);
            prefix.pop();
        }
    }
}
