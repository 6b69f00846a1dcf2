//! The rule loader on any text: rules, or errors that name the file and say where (a line, a
//! field or a rule). Flow nesting past 64 levels is refused before parsing (see docs/security.md).
#![no_main]

use backstop::rules::parse_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let file = std::path::Path::new("fuzz.yaml");
    let mut errors = Vec::new();
    let _rules = parse_file(file, &text, &mut errors);
    for e in &errors {
        assert!(e.file == file && !e.message.is_empty());
        // Several YAML documents: the line of the second `---` is given when there is one;
        // other ways of starting a document (`...` then content) may still come without.
        let whole_file = e.message.contains("more than one document");
        assert!(e.line.is_some() || !e.field.is_empty() || e.rule.is_some() || whole_file, "says nowhere: {e}");
    }
});
