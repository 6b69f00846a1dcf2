//! Minimal-diff editing of YAML manifests.
//!
//! GitOps users review diffs, so when backstop changes an object in a file only the values that
//! must change may change: comments, key order, quoting, blank lines and indentation stay as they
//! are. [`edit_document`] computes the difference between a document's current value and the
//! wanted one and applies it as a few byte-range replacements and line insertions, located with
//! the source positions reported by `saphyr-parser`. Whatever it cannot do that way (removed keys,
//! changed sequence lengths, scalar↔collection changes, anchors, aliases, tags) is refused with
//! [`YamlEditError::Unsupported`], and every produced text is parsed again and compared before it
//! is returned.
//!
//! Values follow the YAML 1.2 core schema: `null`/`~`/empty, `true`/`false`, integers (decimal,
//! `0x`, `0o`), floats, and strings; quoted scalars are always strings.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle, Span, StrInput, Tag};
use serde_json::{Map, Number, Value};

/// One document of a YAML stream: its 0-based position in the stream and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub index: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlEditError {
    /// The text is not YAML. `line` and `column` are 1-based.
    #[error("YAML syntax error in document {index} at line {line}, column {column}: {message}")]
    Syntax { index: usize, line: usize, column: usize, message: String },
    /// Valid YAML that has no JSON value (complex or duplicate keys, `.inf`, unknown aliases…).
    #[error("document {index} at line {line}, column {column} has no JSON value: {what}")]
    Unrepresentable { index: usize, line: usize, column: usize, what: String },
    #[error("there is no document {index}: the text has {count}")]
    NoSuchDocument { index: usize, count: usize },
    /// The change at `path` (e.g. `spec.http[0].route[1].weight`, `$` for the whole document)
    /// cannot be made in place.
    #[error("document {index}: cannot change `{path}` in place: {what}")]
    Unsupported { index: usize, path: String, what: String },
    /// The edited text would not read back as intended; nothing should be written.
    #[error("document {index}: the edited text would not read back as intended: {what}")]
    Verification { index: usize, what: String },
}

/// Parse a (possibly multi-document, `---` separated) YAML text into JSON values.
///
/// # Errors
/// [`YamlEditError::Syntax`] for text that is not YAML, [`YamlEditError::Unrepresentable`] for
/// YAML without a JSON value.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, YamlEditError> {
    Ok(parse(text)?.into_iter().enumerate().map(|(index, doc)| Document { index, value: doc.value }).collect())
}

/// Rewrite document `index` of `text` so that it parses to `new`, changing as few bytes as possible.
///
/// Changed scalars are replaced in their own style where it can hold the new value; new keys are
/// added after the last entry of their mapping, at its indentation and with the file's line ends.
///
/// # Errors
/// Those of [`parse_documents`]; [`YamlEditError::NoSuchDocument`];
/// [`YamlEditError::Unsupported`] for a change that cannot be made in place; and
/// [`YamlEditError::Verification`] if the result would not read back as `new` with every other
/// document unchanged.
pub fn edit_document(text: &str, index: usize, new: &Value) -> Result<String, YamlEditError> {
    let docs = parse(text)?;
    let doc = docs.get(index).ok_or(YamlEditError::NoSuchDocument { index, count: docs.len() })?;
    // The file's own way of indenting a sequence under a key, this document's first.
    let seq_indent = std::iter::once(doc).chain(&docs).find_map(|d| sequence_indent(text, &d.root)).unwrap_or(2);
    let mut editor = Editor { text, index, newline: newline_of(text), seq_indent, edits: Vec::new() };
    editor.diff(&doc.root, &doc.value, new, "", false)?;
    if editor.edits.is_empty() {
        return Ok(text.to_owned());
    }
    let failed = |what: String| YamlEditError::Verification { index, what };
    let edited = apply(text, editor.edits).ok_or_else(|| failed("edits overlap".into()))?;
    let after = parse(&edited).map_err(|e| failed(format!("it does not parse: {e}")))?;
    if after.len() != docs.len() {
        return Err(failed(format!("it has {} documents instead of {}", after.len(), docs.len())));
    }
    for (i, (before, after)) in docs.iter().zip(&after).enumerate() {
        let wanted = if i == index { new } else { &before.value };
        if after.value != *wanted {
            return Err(failed(format!("document {i} reads back as {}", after.value)));
        }
    }
    Ok(edited)
}

// ---------------------------------------------------------------------------------------------
// Parsing: events with positions → a tree of nodes with byte ranges → JSON values.

/// Deeper nesting is refused rather than risking the stack.
const MAX_DEPTH: usize = 256;

struct Parsed {
    root: Node,
    value: Value,
}

struct Node {
    kind: Kind,
    /// Byte range of the node's text (for collections in block style: first to last content byte).
    start: usize,
    end: usize,
    /// 1-based line, 0-based character column of `start`.
    line: usize,
    col: usize,
    anchor: usize,
    tag: Option<Tag>,
}

enum Kind {
    Scalar { value: String, style: ScalarStyle },
    Mapping { entries: Vec<(Node, Node)>, flow: bool },
    Sequence { items: Vec<Node>, flow: bool },
    Alias(usize),
}

fn parse(text: &str) -> Result<Vec<Parsed>, YamlEditError> {
    let mut reader = Reader {
        text,
        parser: Parser::new_from_str(text),
        offsets: text.char_indices().map(|(i, _)| i).collect(),
        index: 0,
    };
    let mut docs = Vec::new();
    loop {
        match reader.next()?.0 {
            Event::StreamEnd => return Ok(docs),
            Event::DocumentStart(_) => {
                reader.index = docs.len();
                let (event, span) = reader.next()?;
                let root = reader.node(event, span, 0)?;
                let value = to_json(&root, &mut HashMap::new(), docs.len())?;
                docs.push(Parsed { root, value });
            }
            _ => {}
        }
    }
}

struct Reader<'a> {
    text: &'a str,
    parser: Parser<'a, StrInput<'a>>,
    /// Byte offset of each character: the parser counts positions in characters.
    offsets: Vec<usize>,
    /// The document being read, for errors.
    index: usize,
}

impl<'a> Reader<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlEditError> {
        match self.parser.next_event() {
            Some(Ok(event)) => Ok(event),
            Some(Err(e)) => Err(self.syntax(e.marker(), e.info())),
            None => Err(self.syntax(&Marker::new(self.offsets.len(), 0, 0), "unexpected end")),
        }
    }

    fn syntax(&self, at: &Marker, message: &str) -> YamlEditError {
        YamlEditError::Syntax { index: self.index, line: at.line(), column: at.col() + 1, message: message.to_owned() }
    }

    fn byte(&self, at: Marker) -> usize {
        self.offsets.get(at.index()).copied().unwrap_or(self.text.len())
    }

    fn node(&mut self, event: Event<'a>, span: Span, depth: usize) -> Result<Node, YamlEditError> {
        let mut node = Node {
            kind: Kind::Alias(0),
            start: self.byte(span.start),
            end: self.byte(span.end),
            line: span.start.line(),
            col: span.start.col(),
            anchor: 0,
            tag: None,
        };
        if depth > MAX_DEPTH {
            return Err(unrepresentable(&node, self.index, "nesting is too deep"));
        }
        // A collection's start span covers its anchor, tag and, in flow style, the bracket.
        let opens_flow = self.text.get(node.start..node.end).is_some_and(|s| s.trim_end().ends_with(['{', '[']));
        match event {
            Event::Scalar(value, style, anchor, tag) => {
                if matches!(style, ScalarStyle::SingleQuoted | ScalarStyle::DoubleQuoted) {
                    // The reported end of a quoted scalar runs on over trailing blanks and comments.
                    node.end = quoted_end(self.text, node.start).unwrap_or(node.end);
                }
                node.kind = Kind::Scalar { value: value.into_owned(), style };
                node.anchor = anchor;
                node.tag = tag.map(Cow::into_owned);
            }
            Event::Alias(id) => node.kind = Kind::Alias(id),
            Event::MappingStart(anchor, tag) => {
                let mut entries = Vec::new();
                let end = loop {
                    let (event, span) = self.next()?;
                    if event == Event::MappingEnd {
                        break span;
                    }
                    let key = self.node(event, span, depth + 1)?;
                    let (event, span) = self.next()?;
                    entries.push((key, self.node(event, span, depth + 1)?));
                };
                self.close(&mut node, opens_flow, end, entries.last().map(|(_, v)| v));
                if let (false, Some((first_key, _))) = (opens_flow, entries.first()) {
                    // A block mapping's indentation is its keys' (its start may be an anchor or a tag).
                    node.col = first_key.col;
                }
                node.kind = Kind::Mapping { entries, flow: opens_flow };
                node.anchor = anchor;
                node.tag = tag.map(Cow::into_owned);
            }
            Event::SequenceStart(anchor, tag) => {
                let mut items = Vec::new();
                let end = loop {
                    let (event, span) = self.next()?;
                    if event == Event::SequenceEnd {
                        break span;
                    }
                    items.push(self.node(event, span, depth + 1)?);
                };
                self.close(&mut node, opens_flow, end, items.last());
                node.kind = Kind::Sequence { items, flow: opens_flow };
                node.anchor = anchor;
                node.tag = tag.map(Cow::into_owned);
            }
            other => return Err(self.syntax(&span.start, &format!("unexpected {other:?}"))),
        }
        Ok(node)
    }

    /// Set where a collection ends: at its closing bracket, or in block style with its last child.
    fn close(&self, node: &mut Node, flow: bool, end: Span, last: Option<&Node>) {
        node.end = match (flow, last) {
            // Its reported span may run on over trailing blanks and comments, like a quoted scalar's.
            (true, _) => self.byte(end.start) + 1,
            (false, Some(last)) => last.end,
            (false, None) => node.start,
        };
    }
}

/// The byte after the closing quote of the quoted scalar whose opening quote is at or after `from`.
fn quoted_end(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let open = from + text.get(from..)?.find(['\'', '"'])?;
    let quote = bytes[open];
    let mut i = open + 1;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'\\' if quote == b'"' => i += 2,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            _ if b == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

fn unrepresentable(node: &Node, index: usize, what: &str) -> YamlEditError {
    YamlEditError::Unrepresentable { index, line: node.line, column: node.col + 1, what: what.to_owned() }
}

fn to_json(node: &Node, anchors: &mut HashMap<usize, Value>, index: usize) -> Result<Value, YamlEditError> {
    let value = match &node.kind {
        Kind::Scalar { value, style } => {
            let core_tag = node.tag.as_ref().filter(|t| t.is_yaml_core_schema()).map(|t| t.suffix.as_str());
            match (core_tag, style) {
                (Some("str"), _) => Value::String(value.clone()),
                (Some("null" | "bool" | "int" | "float"), _) | (_, ScalarStyle::Plain) => {
                    resolve_plain(value).map_err(|what| unrepresentable(node, index, what))?
                }
                _ => Value::String(value.clone()),
            }
        }
        Kind::Alias(id) => {
            anchors.get(id).cloned().ok_or_else(|| unrepresentable(node, index, "alias to an unknown anchor"))?
        }
        Kind::Sequence { items, .. } => {
            Value::Array(items.iter().map(|item| to_json(item, anchors, index)).collect::<Result<_, _>>()?)
        }
        Kind::Mapping { entries, .. } => {
            let mut map = Map::new();
            for (key, value) in entries {
                let Kind::Scalar { value: name, .. } = &key.kind else {
                    return Err(unrepresentable(key, index, "mapping key is not a scalar"));
                };
                let value = to_json(value, anchors, index)?;
                if map.insert(name.clone(), value).is_some() {
                    return Err(unrepresentable(key, index, "duplicate mapping key"));
                }
            }
            Value::Object(map)
        }
    };
    if node.anchor != 0 {
        anchors.insert(node.anchor, value.clone());
    }
    Ok(value)
}

/// Resolve a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(s: &str) -> Result<Value, &'static str> {
    Ok(match s {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ if is_decimal_int(s) => match (s.parse::<i64>(), s.parse::<u64>()) {
            (Ok(i), _) => i.into(),
            (_, Ok(u)) => u.into(),
            _ => float(s)?,
        },
        _ if s.starts_with("0x") || s.starts_with("0o") => {
            let radix = if s.starts_with("0x") { 16 } else { 8 };
            match u64::from_str_radix(&s[2..], radix) {
                Ok(u) => u.into(),
                Err(_) if s[2..].chars().all(|c| c.is_digit(radix)) && s.len() > 2 => {
                    return Err("integer too large");
                }
                Err(_) => Value::String(s.to_owned()),
            }
        }
        _ if is_float(s) => float(s)?,
        _ if is_special_float(s) => return Err("infinite or NaN float"),
        _ => Value::String(s.to_owned()),
    })
}

fn float(s: &str) -> Result<Value, &'static str> {
    s.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number).ok_or("float out of range")
}

fn is_decimal_int(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => !frac.is_empty() && digits(frac),
        Some((int, frac)) => digits(int) && digits(frac),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    mantissa_ok
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['-', '+']).unwrap_or(e);
            !e.is_empty() && digits(e)
        })
}

fn is_special_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    matches!(s, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN")
}

// ---------------------------------------------------------------------------------------------
// Editing: the difference between two values as edits of the text.

struct Edit {
    start: usize,
    end: usize,
    text: String,
}

struct Editor<'a> {
    text: &'a str,
    index: usize,
    newline: &'static str,
    /// Columns between a key and the `-` of a block sequence under it.
    seq_indent: usize,
    edits: Vec<Edit>,
}

impl Editor<'_> {
    fn diff(&mut self, node: &Node, old: &Value, new: &Value, path: &str, in_flow: bool) -> Result<(), YamlEditError> {
        if old == new {
            return Ok(());
        }
        if matches!(node.kind, Kind::Alias(_)) {
            return Err(self.unsupported(path, "the value comes from an alias"));
        }
        if node.anchor != 0 {
            return Err(self.unsupported(path, "the value has an anchor that aliases may share"));
        }
        if let Some(tag) = &node.tag {
            return Err(self.unsupported(path, &format!("the value is tagged {tag}")));
        }
        match (&node.kind, old, new) {
            (Kind::Scalar { style, .. }, _, new) if !new.is_array() && !new.is_object() => {
                self.replace_scalar(node, *style, new, in_flow, path)
            }
            (Kind::Mapping { entries, flow }, Value::Object(old_map), Value::Object(new_map)) => {
                for (key, value) in entries {
                    let Kind::Scalar { value: name, .. } = &key.kind else {
                        continue;
                    };
                    let path = key_path(path, name);
                    let (Some(old), Some(new)) = (old_map.get(name), new_map.get(name)) else {
                        return Err(self.unsupported(&path, "removing a key is not supported"));
                    };
                    self.diff(value, old, new, &path, in_flow || *flow)?;
                }
                let added: Vec<_> = new_map.iter().filter(|(k, _)| !old_map.contains_key(*k)).collect();
                if !added.is_empty() {
                    if *flow {
                        self.add_flow_entries(node, &added, path)?;
                    } else {
                        self.add_block_entries(node, &added);
                    }
                }
                Ok(())
            }
            (Kind::Sequence { items, flow }, Value::Array(old_items), Value::Array(new_items)) => {
                if old_items.len() != new_items.len() {
                    let what =
                        format!("the sequence would change length from {} to {}", old_items.len(), new_items.len());
                    return Err(self.unsupported(path, &what));
                }
                for (i, ((item, old), new)) in items.iter().zip(old_items).zip(new_items).enumerate() {
                    self.diff(item, old, new, &format!("{path}[{i}]"), in_flow || *flow)?;
                }
                Ok(())
            }
            _ => {
                let what = format!("changing {} to {} is not supported", type_name(old), type_name(new));
                Err(self.unsupported(path, &what))
            }
        }
    }

    fn unsupported(&self, path: &str, what: &str) -> YamlEditError {
        let path = if path.is_empty() { "$" } else { path };
        YamlEditError::Unsupported { index: self.index, path: path.to_owned(), what: what.to_owned() }
    }

    fn replace_scalar(
        &mut self,
        node: &Node,
        style: ScalarStyle,
        new: &Value,
        in_flow: bool,
        path: &str,
    ) -> Result<(), YamlEditError> {
        if matches!(style, ScalarStyle::Literal | ScalarStyle::Folded) {
            return Err(self.unsupported(path, "changing a block scalar (| or >) is not supported"));
        }
        let mut text = scalar(new, style, in_flow);
        let mut at = node.start;
        if node.start == node.end {
            // An empty value (null) is reported before the `:` of its key; write after it.
            let rest = self.text.get(at..).unwrap_or_default();
            let after_blanks = rest.trim_start_matches([' ', '\t']);
            if let Some(after_colon) = after_blanks.strip_prefix(':') {
                at = self.text.len() - after_colon.len();
            }
            if !self.text.get(..at).unwrap_or_default().ends_with([' ', '\t']) {
                text.insert(0, ' ');
            }
            self.edits.push(Edit { start: at, end: at, text });
        } else {
            self.edits.push(Edit { start: node.start, end: node.end, text });
        }
        Ok(())
    }

    /// New `key: value` lines after the block mapping's last entry, at its indentation.
    fn add_block_entries(&mut self, mapping: &Node, added: &[(&String, &Value)]) {
        let mut lines = Vec::new();
        for (key, value) in added {
            self.block_entry(&mut lines, mapping.col, key, value);
        }
        let nl = self.newline;
        let body = lines.join(nl);
        // After the line holding the last content byte (and its comment), before what follows.
        let content = self.text.get(..mapping.end).unwrap_or_default().trim_end();
        let edit = match self.text.get(content.len()..).unwrap_or_default().find('\n') {
            Some(i) => Edit { start: content.len() + i + 1, end: content.len() + i + 1, text: body + nl },
            None => Edit { start: self.text.len(), end: self.text.len(), text: format!("{nl}{body}") },
        };
        self.edits.push(edit);
    }

    fn block_entry(&self, lines: &mut Vec<String>, indent: usize, key: &str, value: &Value) {
        let pad = " ".repeat(indent);
        let key = string(key, ScalarStyle::Plain, false);
        match value {
            Value::Object(map) if !map.is_empty() => {
                lines.push(format!("{pad}{key}:"));
                for (k, v) in map {
                    self.block_entry(lines, indent + 2, k, v);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                lines.push(format!("{pad}{key}:"));
                self.block_items(lines, indent + self.seq_indent, items);
            }
            _ => lines.push(format!("{pad}{key}: {}", flow(value))),
        }
    }

    fn block_items(&self, lines: &mut Vec<String>, indent: usize, items: &[Value]) {
        let pad = " ".repeat(indent);
        for item in items {
            let first = lines.len();
            match item {
                Value::Object(map) if !map.is_empty() => {
                    for (k, v) in map {
                        self.block_entry(lines, indent + 2, k, v);
                    }
                }
                Value::Array(items) if !items.is_empty() => self.block_items(lines, indent + 2, items),
                _ => lines.push(format!("{pad}  {}", flow(item))),
            }
            // The item's first line was written two columns in; put the dash there.
            if let Some(line) = lines.get_mut(first) {
                *line = format!("{pad}- {}", line.get(indent + 2..).unwrap_or_default());
            }
        }
    }

    /// `, key: value` before the `}` of a flow mapping.
    fn add_flow_entries(
        &mut self,
        mapping: &Node,
        added: &[(&String, &Value)],
        path: &str,
    ) -> Result<(), YamlEditError> {
        let inside = self
            .text
            .get(..mapping.end)
            .and_then(|s| s.strip_suffix('}'))
            .map(str::trim_end)
            .ok_or_else(|| self.unsupported(path, "the flow mapping's end was not found"))?;
        let separator = match inside.chars().last() {
            Some('{') => "",
            Some(',') => " ",
            _ => ", ",
        };
        let body: Vec<_> =
            added.iter().map(|(k, v)| format!("{}: {}", string(k, ScalarStyle::Plain, true), flow(v))).collect();
        let at = inside.len();
        self.edits.push(Edit { start: at, end: at, text: format!("{separator}{}", body.join(", ")) });
        Ok(())
    }
}

fn key_path(path: &str, key: &str) -> String {
    let simple = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), simple) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Apply non-overlapping edits; insertions at one place keep the order they were made in.
fn apply(text: &str, mut edits: Vec<Edit>) -> Option<String> {
    edits.sort_by_key(|e| e.start);
    let mut out = String::with_capacity(text.len() + edits.iter().map(|e| e.text.len()).sum::<usize>());
    let mut done = 0;
    for edit in edits {
        out.push_str(text.get(done..edit.start)?);
        out.push_str(&edit.text);
        done = edit.end;
    }
    out.push_str(text.get(done..)?);
    Some(out)
}

fn newline_of(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

/// Columns between a block mapping's keys and the dashes of the first block sequence under one.
fn sequence_indent(text: &str, node: &Node) -> Option<usize> {
    match &node.kind {
        Kind::Mapping { entries, flow } => entries.iter().find_map(|(_, value)| match &value.kind {
            Kind::Sequence { flow: false, .. } if !flow => {
                let line_start = text.get(..value.start)?.rfind('\n').map_or(0, |i| i + 1);
                let dash = text.get(line_start..)?.bytes().take_while(|&b| b == b' ').count();
                dash.checked_sub(node.col)
            }
            _ => sequence_indent(text, value),
        }),
        Kind::Sequence { items, .. } => items.iter().find_map(|item| sequence_indent(text, item)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Writing values.

/// A value in flow style: scalars, `[a, b]`, `{k: v}`.
fn flow(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => {
            let entries: Vec<_> =
                map.iter().map(|(k, v)| format!("{}: {}", string(k, ScalarStyle::Plain, true), flow(v))).collect();
            format!("{{{}}}", entries.join(", "))
        }
        scalar_value => scalar(scalar_value, ScalarStyle::Plain, true),
    }
}

/// A scalar value; strings in `style` when it can hold them, numbers and the like always plain.
fn scalar(value: &Value, style: ScalarStyle, in_flow: bool) -> String {
    match value {
        Value::String(s) => string(s, style, in_flow),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

fn string(s: &str, style: ScalarStyle, in_flow: bool) -> String {
    let single_ok = !s.chars().any(needs_escape);
    match style {
        ScalarStyle::Plain if can_be_plain(s, in_flow) => s.to_owned(),
        ScalarStyle::DoubleQuoted => double_quoted(s),
        _ if single_ok => format!("'{}'", s.replace('\'', "''")),
        _ => double_quoted(s),
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{feff}' | '\u{2028}' | '\u{2029}')
}

/// Whether `s` written plain reads back as the same string.
fn can_be_plain(s: &str, in_flow: bool) -> bool {
    const INDICATORS: &[char] =
        &['-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`'];
    matches!(resolve_plain(s), Ok(Value::String(_)))
        && !s.starts_with(INDICATORS)
        && !s.starts_with(' ')
        && !s.ends_with([' ', ':'])
        && !s.contains(": ")
        && !s.contains(" #")
        && !s.chars().any(needs_escape)
        && !(in_flow && s.contains([',', '[', ']', '{', '}', ':']))
}

fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
