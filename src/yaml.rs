//! What the config and the rule files share in reporting their problems: where in the text a
//! field is ([`FieldLines`]), and every problem of a document that does not read, not only the
//! first ([`read_all`]).

use std::collections::HashMap;

use serde_yaml_ng::Value;

/// The line of each mapping key and list item of a YAML text, by path as serde errors name it
/// (`rules[2].action.rollback`, `kafka.properties`), from one pass of a YAML parser; a path
/// given twice keeps its first line.
pub struct FieldLines(HashMap<String, usize>);

impl FieldLines {
    pub fn of(text: &str) -> FieldLines {
        use saphyr_parser::Event;
        /// Where the parser is: in a mapping (the path of the value after the key just read, or
        /// `None` while a key is expected), or in a sequence (its path and next index).
        enum Frame {
            Map { base: String, value: Option<String> },
            Seq { base: String, next: usize },
        }
        let mut lines = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        // The path of the node that starts now, recording its line; a mapping's key is recorded
        // as the path of its value (and has no path itself: `None`).
        let mut node = |stack: &mut Vec<Frame>, line: usize, key: Option<&str>| -> Option<String> {
            match stack.last_mut() {
                None => Some(String::new()),
                Some(Frame::Seq { base, next }) => {
                    let path = format!("{base}[{next}]");
                    *next += 1;
                    lines.entry(path.clone()).or_insert(line);
                    Some(path)
                }
                Some(Frame::Map { value: value @ Some(_), .. }) => value.take(),
                Some(Frame::Map { base, value: value @ None }) => {
                    // A complex key (a mapping or a list as a key) gets no path.
                    let key = key.unwrap_or("?");
                    let path = if base.is_empty() { key.to_string() } else { format!("{base}.{key}") };
                    lines.entry(path.clone()).or_insert(line);
                    *value = Some(path);
                    None
                }
            }
        };
        for event in saphyr_parser::Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            let line = span.start.line().max(1);
            match event {
                Event::Scalar(value, ..) => {
                    let key_expected = matches!(stack.last(), Some(Frame::Map { value: None, .. }));
                    let _ = node(&mut stack, line, key_expected.then_some(value.as_ref()));
                }
                Event::Alias(_) => {
                    let _ = node(&mut stack, line, None);
                }
                Event::MappingStart(..) => {
                    let base = node(&mut stack, line, None).unwrap_or_else(|| "?".into());
                    stack.push(Frame::Map { base, value: None });
                }
                Event::SequenceStart(..) => {
                    let base = node(&mut stack, line, None).unwrap_or_else(|| "?".into());
                    stack.push(Frame::Seq { base, next: 0 });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::DocumentEnd | Event::StreamEnd => break,
                _ => {}
            }
        }
        FieldLines(lines)
    }

    /// The line of `field` (a path as errors name it: `action.rollback.canary`) within the node
    /// at `base` (`rules[3]`, or `""` for the document): the field's own line, else its nearest
    /// enclosing field's (a missing field is reported where its parent is), else `base`'s.
    pub fn line(&self, base: &str, field: &str) -> Option<usize> {
        let mut path = match (base, field) {
            (b, "") => b.to_string(),
            ("", f) => f.to_string(),
            (b, f) if f.starts_with('[') => format!("{b}{f}"),
            (b, f) => format!("{b}.{f}"),
        };
        loop {
            if let Some(line) = self.0.get(&path) {
                return Some(*line);
            }
            match path.rfind(['.', '[']) {
                Some(cut) if cut >= base.len() && !(base.is_empty() && cut == 0) => path.truncate(cut),
                _ => return None,
            }
        }
    }
}

/// A problem of a document: the path of the field (empty for the document itself) and what is
/// wrong with it.
pub type Problem = (String, String);

/// What [`read_all`] made of a document that did not read at first.
pub struct ReadAll<T> {
    /// Every problem found, the first one first.
    pub problems: Vec<Problem>,
    /// The document as read without its unknown fields, when those were all that stood in the
    /// way: a typo cannot change what the rest means, so the rest may still be checked for sense.
    pub without_unknown: Option<T>,
}

/// A problem as serde_path_to_error reports it: its path (empty for the document) and message
/// (without the path serde_yaml puts in front of a nested one's, and without its position).
pub fn problem<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> Problem {
    let path = match e.path().to_string() {
        dot if dot == "." => String::new(),
        path => path,
    };
    let mut message = plain(&strip_location(&e.into_inner().to_string()));
    // serde_yaml names the mapping the problem is in: the path or one that encloses it.
    let mut enclosing = path.as_str();
    while !enclosing.is_empty() {
        if let Some(rest) = message.strip_prefix(&format!("{enclosing}: ")) {
            message = rest.to_string();
            break;
        }
        enclosing = &enclosing[..enclosing.rfind(['.', '[']).unwrap_or(0)];
    }
    (path, message)
}

/// A document stops reading at its first problem (`first`, from reading `value` with `read`); to
/// report the others with it, the field at fault is set aside and the document read again, until
/// it reads or the only problem left is a field set aside (`missing field`). An unknown field is
/// set aside where it is; any other problem takes its top-level field with it (a value of the
/// wrong type may be one that something else needs).
pub fn read_all<T>(mut value: Value, first: Problem, read: impl Fn(&Value) -> Result<T, Problem>) -> ReadAll<T> {
    let (mut problems, mut set_aside, mut only_unknown) = (Vec::new(), Vec::<String>::new(), true);
    let mut error = first;
    loop {
        let (path, message) = error;
        // `missing field `x`` in the mapping at `path`: not news if x was set aside.
        let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
        let missing = missing.map(|m| if path.is_empty() { m.to_string() } else { format!("{path}.{m}") });
        if missing.is_some_and(|m| set_aside.contains(&m)) {
            return ReadAll { problems, without_unknown: None };
        }
        problems.push((path.clone(), message.clone()));
        let unknown = message.starts_with("unknown field");
        let field = match unknown {
            true => path.clone(),
            false => path.split(['.', '[']).next().unwrap_or_default().to_string(),
        };
        if path.is_empty() || set_aside.contains(&field) || !remove(&mut value, &field) {
            return ReadAll { problems, without_unknown: None };
        }
        only_unknown &= unknown;
        set_aside.push(field);
        match read(&value) {
            Err(next) => error = next,
            Ok(read) => return ReadAll { problems, without_unknown: only_unknown.then_some(read) },
        }
    }
}

/// Take out the value at `path` (`kafka.properties`, `rules[2].colldown`), keeping the order of
/// what is left; false if there is none.
fn remove(value: &mut Value, path: &str) -> bool {
    // Segments: keys and list indices, `a.b[2].c` -> a, b, [2], c.
    let mut segments = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            segments.push(&rest[..i]);
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                segments.push(&rest[..=end]);
                rest = &rest[end + 1..];
            }
        } else {
            segments.push(rest);
        }
    }
    let segments: Vec<&str> = segments.into_iter().filter(|s| !s.is_empty()).collect();
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut node = value;
    for s in parents {
        let next = match s.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
            Some(i) => i.parse::<usize>().ok().and_then(|i| node.as_sequence_mut()?.get_mut(i)),
            None => node.as_mapping_mut().and_then(|m| m.get_mut(*s)),
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    node.as_mapping_mut().and_then(|m| m.shift_remove(*last)).is_some()
}

/// A duration as written (`30s`, `5m`), kept as text for humantime to read and refuse with its
/// field's name. A bare number is refused here, saying what to write: `cooldown: 300` would
/// otherwise be "invalid type: integer `300`, expected a string".
pub fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::de::{Error, Visitor};
    struct Text;
    impl<'de> Visitor<'de> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as 30s, 5m or 1h")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Self::Value, E> {
            Err(E::custom(format!("`{v}` has no unit: write {v}s if seconds are meant (durations: 30s, 5m, 1h)")))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Self::Value, E> {
            Err(E::custom(format!("`{v}` is not a duration: write one such as 30s, 5m or 1h")))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Self::Value, E> {
            Err(E::custom(format!("`{v}` has no unit: write a duration such as 1m30s or 90s")))
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(Text)
        }
    }
    d.deserialize_any(Text)
}

/// serde names the Rust type it expected (`expected struct RawRule`), which means nothing to
/// whoever wrote the YAML: it expected a mapping (`key: value` lines or `{key: value}`).
pub fn plain(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    match message.find(STRUCT) {
        Some(i) => {
            let rest = &message[i + STRUCT.len()..];
            let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
            format!("{}expected a mapping{}", &message[..i], &rest[end..])
        }
        None => message.to_string(),
    }
}

/// serde_yaml appends " at line L column C" to its messages; the line is reported on its own.
pub fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key and list item has the line it is on; a field that is not there (a missing one)
    /// has its nearest enclosing field's.
    #[test]
    fn field_lines_follow_block_and_flow_style_and_fall_back_to_the_parent() {
        let text = "rules:\n  - name: a\n    match:\n      - x\n      - 'y'\n    action: {rollback: {stable: v1,\n      canary: v2}}\n  - {name: b, target: {namespace: n}}\nguards:\n  window: 1h\n";
        let lines = FieldLines::of(text);
        assert_eq!(lines.line("rules[0]", ""), Some(2));
        assert_eq!(lines.line("rules[0]", "name"), Some(2));
        assert_eq!(lines.line("rules[0]", "match"), Some(3));
        assert_eq!(lines.line("rules[0]", "match[1]"), Some(5));
        assert_eq!(lines.line("rules[0]", "action.rollback.canary"), Some(7));
        assert_eq!(lines.line("rules[0]", "action.rollback.interval"), Some(6), "missing: its parent's line");
        assert_eq!(lines.line("rules[1]", "target.virtualservice"), Some(8));
        assert_eq!(lines.line("rules[2]", "name"), None, "no third rule: not another rule's line");
        assert_eq!(lines.line("", "guards.window"), Some(10));
        assert_eq!(lines.line("", "guards.max_actions"), Some(9));
        assert_eq!(lines.line("", "kafka.brokers"), None, "nothing at the top to fall back to");
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        #[serde(default)]
        count: u32,
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        a: String,
    }

    fn read(v: &Value) -> Result<Doc, Problem> {
        serde_path_to_error::deserialize(v).map_err(problem)
    }

    fn all(text: &str) -> ReadAll<Doc> {
        let value: Value = serde_yaml_ng::from_str(text).unwrap();
        let first = read(&value).unwrap_err();
        read_all(value, first, read)
    }

    #[test]
    fn every_problem_is_found_by_setting_aside_the_field_at_fault() {
        let r = all("name: x\ncount: many\ninner: {b: 1}\nnmae: y\n");
        let fields: Vec<&str> = r.problems.iter().map(|(f, _)| f.as_str()).collect();
        // `inner` without its unknown `b` lacks `a`: a problem of its own.
        assert_eq!(fields, ["count", "inner.b", "inner", "nmae"], "{:?}", r.problems);
        assert_eq!(r.problems[2].1, "missing field `a`");
        assert!(r.problems[1].1.starts_with("unknown field `b`"), "{:?}", r.problems);
        assert!(r.without_unknown.is_none(), "a field of the wrong type was set aside");
        assert!(
            !r.problems.iter().any(|(_, m)| m.contains("missing field `inner`")),
            "a required field set aside is not reported missing as well: {:?}",
            r.problems
        );
    }

    #[test]
    fn a_document_held_up_only_by_unknown_fields_is_read_without_them() {
        let r = all("name: x\ncolor: red\ninner: {a: z}\nsize: 3\n");
        assert_eq!(r.problems.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(), ["color", "size"]);
        assert_eq!(r.without_unknown, Some(Doc { name: "x".into(), count: 0, inner: Inner { a: "z".into() } }));
    }

    #[test]
    fn an_unknown_field_is_set_aside_where_it_is_and_the_rest_still_read() {
        let r = all("name: x\ninner: {a: z, b: 1}\n");
        assert_eq!(r.problems, [("inner.b".to_string(), "unknown field `b`, expected `a`".to_string())]);
        assert_eq!(r.without_unknown, Some(Doc { name: "x".into(), count: 0, inner: Inner { a: "z".into() } }));
    }

    #[derive(Debug, serde::Deserialize)]
    struct Timed {
        #[serde(default, deserialize_with = "duration")]
        every: Option<String>,
    }

    #[test]
    fn a_duration_is_kept_as_written_and_a_bare_number_is_told_to_take_a_unit() {
        let read =
            |t: &str| serde_yaml_ng::from_str::<Timed>(t).map(|t| t.every).map_err(|e| strip_location(&e.to_string()));
        assert_eq!(read("every: 5m\n"), Ok(Some("5m".into())));
        assert_eq!(read("every: '300'\n"), Ok(Some("300".into())), "text: humantime refuses it later, by name");
        assert_eq!(read("{}\n"), Ok(None));
        assert_eq!(read("every: ~\n"), Ok(None));
        assert_eq!(
            read("every: 300\n"),
            Err("every: `300` has no unit: write 300s if seconds are meant (durations: 30s, 5m, 1h)".into())
        );
        let value: Value = serde_yaml_ng::from_str("every: 1.5\n").unwrap();
        let err = serde_path_to_error::deserialize::<_, Timed>(&value).map_err(problem).unwrap_err();
        assert_eq!(err, ("every".into(), "`1.5` has no unit: write a duration such as 1m30s or 90s".into()));
    }

    #[test]
    fn a_value_is_removed_at_its_path_through_lists_and_mappings() {
        let mut v: Value = serde_yaml_ng::from_str("a: [{b: 1, c: 2}, {b: 3}]\nd: 4\n").unwrap();
        assert!(remove(&mut v, "a[0].b"));
        assert!(!remove(&mut v, "a[5].b"), "no such item");
        assert!(!remove(&mut v, "a[1].x"), "no such key");
        assert!(remove(&mut v, "d"));
        assert_eq!(v, serde_yaml_ng::from_str::<Value>("a: [{c: 2}, {b: 3}]\n").unwrap());
    }

    #[test]
    fn a_document_that_is_not_a_mapping_has_one_problem_in_yaml_terms() {
        let r = all("[1, 2]\n");
        assert_eq!(r.problems, [(String::new(), "invalid type: sequence, expected a mapping".to_string())]);
        let r = all("name: x\ninner: 3\n");
        assert_eq!(r.problems[0], ("inner".to_string(), "invalid type: integer `3`, expected a mapping".to_string()));
    }
}
