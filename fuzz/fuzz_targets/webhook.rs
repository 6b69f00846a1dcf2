//! The Alertmanager webhook parser: any bytes give a webhook or an error that says where, of
//! bounded size; a webhook's alerts all become events.
#![no_main]

use backstop::sources::alertmanager::{MAX_MESSAGE, MAX_PATH, ParseError, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(w) => assert_eq!(w.events().len(), w.alerts.len()),
        Err(ParseError::Syntax { line, message, .. }) => {
            assert!(line >= 1 && message.len() <= MAX_MESSAGE);
        }
        Err(ParseError::Invalid { path, message }) => {
            assert!(!path.is_empty() && path.len() <= MAX_PATH && message.len() <= MAX_MESSAGE);
        }
    }
});
