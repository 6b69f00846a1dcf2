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
    for file in rule_files(paths, &mut errors) {
        match std::fs::read_to_string(&file) {
            Ok(text) => rules.extend(parse_file(&file, &text, &mut errors)),
            Err(e) => errors.push(file_error(&file, format!("cannot read: {e}"))),
        }
    }
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for rule in &rules {
        if let Some(first) = seen.insert(rule.name.clone(), rule.file.clone()) {
            errors.push(RuleError {
                file: rule.file.clone(),
                line: None,
                rule: Some(rule.name.clone()),
                field: "name".into(),
                message: format!("duplicate rule name (also in {})", first.display()),
            });
        }
    }
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
        return Vec::new();
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
            return Vec::new();
        }
    };
    let mut rules = Vec::new();
    let lines = rule_lines(text);
    for (i, value) in raw.rules.into_iter().enumerate() {
        let name = value.get("name").and_then(|n| n.as_str()).map(str::to_string);
        let line = name.as_deref().and_then(|n| lines.get(n).copied());
        let mut push = |field: String, message: String| {
            errors.push(RuleError {
                file: file.to_path_buf(),
                line,
                rule: Some(name.clone().unwrap_or_else(|| format!("#{}", i + 1))),
                field,
                message,
            })
        };
        match serde_path_to_error::deserialize::<_, RawRule>(value) {
            Ok(raw) => match validate(raw, file) {
                Ok(rule) => rules.push(rule),
                Err(problems) => problems.into_iter().for_each(|(f, m)| push(f, m)),
            },
            Err(e) => {
                let path = e.path().to_string();
                push(if path == "." { String::new() } else { path }, strip_location(&e.into_inner().to_string()))
            }
        }
    }
    rules
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

/// The line of each rule's `name:` (the first, for a name given twice), in one pass over the
/// text: looking each rule up in the whole text made a file of 10,000 rules take 20 s to load.
pub(super) fn rule_lines(text: &str) -> HashMap<&str, usize> {
    let mut lines = HashMap::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        if let Some(v) = t.strip_prefix("name:") {
            lines.entry(v.trim().trim_matches(|c| c == '"' || c == '\'')).or_insert(i + 1);
        }
    }
    lines
}
