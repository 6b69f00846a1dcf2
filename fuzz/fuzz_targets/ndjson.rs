//! A feedback batch (`application/x-ndjson`) as `POST /v1/feedback` splits it: every non-blank
//! line once, in order, numbered from 1; each parsed on its own.
#![no_main]

use backstop::http::ndjson_lines;
use backstop::sources::message::{Expect, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let lines = ndjson_lines(data);
    let total = data.split(|b| *b == b'\n').count();
    let mut previous = 0;
    for (n, line) in lines {
        assert!(n > previous && n <= total && !line.contains(&b'\n'));
        previous = n;
        let _ = parse(Expect::Feedback, &[], line);
    }
});
