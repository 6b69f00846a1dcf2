//! Feedback events and CloudEvents (structured, and binary with `ce_` headers). Input layout:
//! first byte picks what the topic expects; if the rest starts with `ce\n`, the lines up to an
//! empty one are headers `name:value`, and what follows is the payload.
#![no_main]

use backstop::sources::alertmanager::{MAX_MESSAGE, MAX_PATH};
use backstop::sources::message::{Expect, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    let expect = if first & 1 == 0 { Expect::Feedback } else { Expect::Alerts };
    let (headers, payload): (Vec<(&str, &[u8])>, &[u8]) = match rest.strip_prefix(b"ce\n") {
        Some(rest) => {
            let end = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
            let headers = rest[..end]
                .split(|b| *b == b'\n')
                .filter_map(|l| {
                    let colon = l.iter().position(|b| *b == b':')?;
                    Some((std::str::from_utf8(&l[..colon]).ok()?, &l[colon + 1..]))
                })
                .collect();
            (headers, rest.get(end + 2..).unwrap_or_default())
        }
        None => (Vec::new(), rest),
    };
    if let Err(e) = parse(expect, &headers, payload) {
        assert!(e.path.len() <= MAX_PATH && !e.message.is_empty() && e.message.len() <= MAX_MESSAGE);
        assert!(!e.path.is_empty() || e.message.starts_with("invalid JSON at line "), "{e}");
    }
});
