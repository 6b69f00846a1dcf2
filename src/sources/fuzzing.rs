//! Strategies shared by the parsers' property tests: JSON values built from a parser's own
//! words (so they often come close to valid input), and byte-level edits of a real payload.

use proptest::prelude::*;
use serde_json::Value;

/// JSON up to 4 levels deep whose strings and keys are often `words` and `keys`.
pub fn json_value(words: &'static [&'static str], keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(words).prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        let key = prop_oneof![prop::sample::select(keys).prop_map(str::to_string), ".{0,8}"];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..8).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Byte-level edits of a real payload: most land inside it and make it subtly wrong.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Repeat(usize, usize, usize),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..60, 1usize..50).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
    ]
}

pub fn apply(body: &mut Vec<u8>, e: &Edit) {
    let len = body.len().max(1);
    match e {
        Edit::Flip(i, b) if !body.is_empty() => body[i % len] = *b,
        Edit::Insert(i, bytes) => {
            let at = i % (body.len() + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        Edit::Delete(i, n) if !body.is_empty() => {
            let at = i % len;
            let end = (at + n).min(body.len());
            body.drain(at..end);
        }
        Edit::Truncate(i) => body.truncate(i % (body.len() + 1)),
        Edit::Repeat(i, n, k) if !body.is_empty() => {
            let at = i % len;
            let piece: Vec<u8> = body[at..(at + n).min(body.len())].to_vec();
            let copies: Vec<u8> = piece.iter().copied().cycle().take(piece.len() * k).collect();
            body.splice(at..at, copies);
        }
        _ => {}
    }
}
