//! Loading: rule files and folders read, each file parsed (one YAML document, bounded nesting),
//! every error collected with its file, line and field, all reported at once.

use super::*;

/// One problem in a rule file, with where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub rule: Option<String>,
    pub field: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule `{rule}`")?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found, reported at once.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Load every rule file under `paths` (files, or directories of `*.yaml`/`*.yml`).
pub fn load(paths: &[PathBuf]) -> Result<RuleSet, RuleErrors> {
    let mut errors = Vec::new();
    let mut rules = Vec::new();
    // Each name's first rule, by file and index: a rule named again is an error where it is.
    let mut seen: HashMap<String, (PathBuf, usize)> = HashMap::new();
    for file in rule_files(paths, &mut errors) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(file_error(&file, format!("cannot read: {e}")));
                continue;
            }
        };
        let (valid, names) = parse_named(&file, &text, &mut errors);
        rules.extend(valid);
        // Every rule's name, valid or not: a name given twice is reported with the rest.
        for (index, name) in names {
            let Some((first, first_index)) = seen.get(&name) else {
                seen.insert(name, (file.clone(), index));
                continue;
            };
            // Rare: the lines are worked out only now (the first may be in another file).
            let name_line = |text: &str, index| FieldLines::of(text).line(index, "name");
            let first_line = match first == &file {
                true => name_line(&text, *first_index),
                false => std::fs::read_to_string(first).ok().and_then(|t| name_line(&t, *first_index)),
            };
            let at = match first_line {
                Some(l) => format!("{}:{l}", first.display()),
                None => first.display().to_string(),
            };
            errors.push(RuleError {
                file: file.clone(),
                line: name_line(&text, index),
                rule: Some(name),
                field: "name".into(),
                message: format!("duplicate rule name (first at {at})"),
            });
        }
    }
    // By file and line (problems without a line, such as an unreadable file, first in theirs).
    errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    if errors.is_empty() { Ok(RuleSet::new(rules)) } else { Err(RuleErrors(errors)) }
}

pub(super) fn file_error(file: &Path, message: String) -> RuleError {
    RuleError { file: file.to_path_buf(), line: None, rule: None, field: String::new(), message }
}

pub(super) fn rule_files(paths: &[PathBuf], errors: &mut Vec<RuleError>) -> Vec<PathBuf> {
    let mut files = BTreeSet::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let yaml = matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
                        if yaml && p.is_file() {
                            files.insert(p);
                        }
                    }
                }
                Err(e) => errors.push(file_error(path, format!("cannot read directory: {e}"))),
            }
        } else if path.is_file() {
            files.insert(path.clone());
        } else {
            errors.push(file_error(path, "no such file or directory".into()));
        }
    }
    files.into_iter().collect()
}

/// Parse one file's text; problems go to `errors`, valid rules are returned.
pub fn parse_file(file: &Path, text: &str, errors: &mut Vec<RuleError>) -> Vec<Rule> {
    parse_named(file, text, errors).0
}

/// [`parse_file`], and the name of every rule that has one (valid or not) with its index in the
/// file's `rules`.
fn parse_named(file: &Path, text: &str, errors: &mut Vec<RuleError>) -> (Vec<Rule>, Vec<(usize, String)>) {
    // The YAML library's time grows much faster than the input with flow nesting (`[[[[…`:
    // 84 s for 100,000 levels); no rule needs more than a few levels.
    if let Some(line) = too_deep(text) {
        errors.push(RuleError {
            file: file.to_path_buf(),
            line: Some(line),
            rule: None,
            field: String::new(),
            message: format!("nested more than {MAX_FLOW_NESTING} levels deep (`[` or `{{`); a rule needs a few"),
        });
        return (Vec::new(), Vec::new());
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let raw: RawFile = match serde_path_to_error::deserialize(de) {
        Ok(raw) => raw,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            errors.push(RuleError {
                file: file.to_path_buf(),
                line: inner.location().map(|l| l.line()).or_else(|| second_document(text)),
                rule: None,
                field: if path == "." { String::new() } else { path },
                message: strip_location(&inner.to_string()),
            });
            return (Vec::new(), Vec::new());
        }
    };
    let (mut rules, mut names) = (Vec::new(), Vec::new());
    // Where each field is, worked out only for a file with a problem (one more parse).
    let mut lines: Option<FieldLines> = None;
    for (i, value) in raw.rules.into_iter().enumerate() {
        let name = value.get("name").and_then(|n| n.as_str()).map(str::to_string);
        names.extend(name.clone().map(|n| (i, n)));
        let mut push = |field: String, message: String| {
            errors.push(RuleError {
                file: file.to_path_buf(),
                line: lines.get_or_insert_with(|| FieldLines::of(text)).line(i, &field),
                rule: Some(name.clone().unwrap_or_else(|| format!("#{}", i + 1))),
                field,
                message,
            })
        };
        match serde_path_to_error::deserialize::<_, RawRule>(&value) {
            Ok(raw) => match validate(raw, file) {
                Ok(rule) => rules.push(rule),
                Err(problems) => problems.into_iter().for_each(|(f, m)| push(f, m)),
            },
            Err(e) => further_problems(value, e, &mut push, file),
        }
    }
    (rules, names)
}

/// A rule that does not read stops at its first problem; to report the others with it, the
/// field at fault is set aside and the rule read again, until it reads or the only problem left
/// is a field set aside (`missing field`). Only if every field set aside was unknown (a typo, which
/// cannot change what the rest means) is the rest checked for sense as well.
fn further_problems(
    mut value: serde_yaml_ng::Value,
    first: serde_path_to_error::Error<serde_yaml_ng::Error>,
    push: &mut impl FnMut(String, String),
    file: &Path,
) {
    let (mut set_aside, mut only_unknown) = (Vec::<String>::new(), true);
    let mut error = first;
    loop {
        let path = error.path().to_string();
        let message = strip_location(&error.into_inner().to_string());
        // `missing field `x``, at the rule: not news if x was set aside.
        let missing = message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`'));
        if path == "." && missing.is_some_and(|m| set_aside.iter().any(|s| s == m)) {
            return;
        }
        push(if path == "." { String::new() } else { path.clone() }, message.clone());
        let field = path.split(['.', '[']).next().unwrap_or_default().to_string();
        let Some(map) = value.as_mapping_mut().filter(|_| path != "." && !set_aside.contains(&field)) else {
            return;
        };
        if map.remove(field.as_str()).is_none() {
            return;
        }
        only_unknown &= message.starts_with("unknown field");
        set_aside.push(field);
        match serde_path_to_error::deserialize::<_, RawRule>(&value) {
            Err(next) => error = next,
            Ok(raw) => {
                if only_unknown && let Err(problems) = validate(raw, file) {
                    problems.into_iter().for_each(|(f, m)| push(f, m));
                }
                return;
            }
        }
    }
}

/// Where a file of several YAML documents goes wrong, for serde_yaml, which says so without a
/// place: the second document's start as a YAML parser sees it (a `---`, or content after a
/// `...` or after what ended the first), or else where that parser stops.
pub(super) fn second_document(text: &str) -> Option<usize> {
    let mut documents = 0;
    for event in saphyr_parser::Parser::new_from_str(text) {
        match event {
            Ok((saphyr_parser::Event::DocumentStart(_), span)) => {
                documents += 1;
                if documents == 2 {
                    return Some(span.start.line().max(1));
                }
            }
            Ok((saphyr_parser::Event::StreamEnd, _)) => return None,
            Ok(_) => {}
            Err(e) => return Some(e.marker().line().max(1)),
        }
    }
    None
}

pub(super) fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before parsing.
pub(super) const MAX_FLOW_NESTING: usize = 64;

/// The line where flow nesting first goes deeper than [`MAX_FLOW_NESTING`], if it does (quoted
/// strings and comments do not count).
pub(super) fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line, mut quote, mut comment, mut prev) = (0usize, 1, None::<char>, false, ' ');
    for c in text.chars() {
        match (c, quote) {
            ('\n', _) => {
                line += 1;
                comment = false;
            }
            _ if comment => {}
            ('\'' | '"', None) => quote = Some(c),
            (c, Some(q)) if c == q && !(q == '"' && prev == '\\') => quote = None,
            (_, Some(_)) => {}
            ('#', None) if prev.is_whitespace() => comment = true,
            ('[' | '{', None) => {
                depth += 1;
                if depth > MAX_FLOW_NESTING {
                    return Some(line);
                }
            }
            (']' | '}', None) => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    None
}

/// The line of each key and list item of a file's rules, by path (`rules[2].action.rollback`,
/// `rules[0].match[1]`), from one pass of a YAML parser over the text; a path given twice keeps
/// its first line.
pub(super) struct FieldLines(HashMap<String, usize>);

impl FieldLines {
    pub(super) fn of(text: &str) -> FieldLines {
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
        // as the path of its value.
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
                    // A key: scalars only (a complex key has no path of its own).
                    let key = key?;
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

    /// The line of field `field` (a path as errors name it: `action.rollback.canary`) of rule
    /// `index`: the field's own, else its nearest enclosing field's (a missing field is reported
    /// where its parent is), else the rule's.
    pub(super) fn line(&self, index: usize, field: &str) -> Option<usize> {
        let rule = format!("rules[{index}]");
        let mut path = match field {
            "" => rule.clone(),
            f if f.starts_with('[') => format!("{rule}{f}"),
            f => format!("{rule}.{f}"),
        };
        loop {
            if let Some(line) = self.0.get(&path) {
                return Some(*line);
            }
            match path.rfind(['.', '[']) {
                Some(cut) if cut >= rule.len() => path.truncate(cut),
                _ => return None,
            }
        }
    }
}
