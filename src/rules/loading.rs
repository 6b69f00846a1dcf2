//! Loading: rule files and folders read, each file parsed (one YAML document, bounded nesting),
//! every error collected with its file, line and field, all reported at once.

use super::*;
use crate::yaml::{FieldLines, strip_location};

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
    // Where each field of a file is, for the files that have a duplicate: parsed once each.
    let mut lines: HashMap<PathBuf, Option<FieldLines>> = HashMap::new();
    let mut name_line = |file: &Path, text: Option<&str>, index: usize| {
        let of = |t: &str| Some(FieldLines::of(t));
        let found = lines.entry(file.to_path_buf()).or_insert_with(|| match text {
            Some(t) => of(t),
            None => std::fs::read_to_string(file).ok().as_deref().and_then(of),
        });
        found.as_ref().and_then(|l| l.line(&format!("rules[{index}]"), "name"))
    };
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
            let first_line = name_line(first, (first == &file).then_some(text.as_str()), *first_index);
            let at = match first_line {
                Some(l) => format!("{}:{l}", first.display()),
                None => first.display().to_string(),
            };
            errors.push(RuleError {
                file: file.clone(),
                line: name_line(&file, Some(&text), index),
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
                message: match crate::yaml::plain(&strip_location(&inner.to_string())) {
                    m if path == "." && m.ends_with("expected a mapping") => {
                        format!("{m}: a rule file is `rules:` and the list of its rules")
                    }
                    m => m,
                },
                field: if path == "." { String::new() } else { path },
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
                line: lines.get_or_insert_with(|| FieldLines::of(text)).line(&format!("rules[{i}]"), &field),
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
            Err(first) => {
                let read = |v: &serde_yaml_ng::Value| serde_path_to_error::deserialize(v).map_err(crate::yaml::problem);
                let all = crate::yaml::read_all(value, crate::yaml::problem(first), read);
                all.problems.into_iter().for_each(|(f, m)| push(f, m));
                if let Some(Err(problems)) = all.without_unknown.map(|raw| validate(raw, file)) {
                    problems.into_iter().for_each(|(f, m)| push(f, m));
                }
            }
        }
    }
    (rules, names)
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
