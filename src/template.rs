//! Templates for rule targets and queries: literal text with `{{ $labels.NAME }}` placeholders,
//! parsed once. Used by the rules, confirmation and verification alike.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Label(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("`{0}`: unclosed `{{{{`")]
    Unclosed(String),
    #[error("`{template}`: unsupported placeholder `{{{{ {inner} }}}}`; use `{{{{ $labels.NAME }}}}`")]
    Placeholder { template: String, inner: String },
}

/// Rendering needs a label the alert does not carry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the alert has no label `{label}` (needed by `{template}`)")]
pub struct MissingLabel {
    pub label: String,
    pub template: String,
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed(source.to_string()))?;
            let inner = after[..end].trim();
            let label = inner
                .strip_prefix("$labels.")
                .or_else(|| inner.strip_prefix(".Labels."))
                .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| TemplateError::Placeholder { template: source.to_string(), inner: inner.to_string() })?;
            parts.push(Part::Label(label.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { source: source.to_string(), parts })
    }

    /// Render with the alert's labels; a missing or empty label is an error, never an empty name.
    pub fn render(&self, labels: &BTreeMap<String, String>) -> Result<String, MissingLabel> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Label(l) => match labels.get(l) {
                    Some(v) if !v.is_empty() => out.push_str(v),
                    _ => {
                        return Err(MissingLabel { label: l.clone(), template: self.source.clone() });
                    }
                },
            }
        }
        Ok(out)
    }

    /// A template without placeholders renders to its text.
    pub fn literal(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("namespace", "sms-app"), ("virtualservice", "model-service"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }

    #[test]
    fn renders_labels_and_text() {
        let t = Template::parse("{{ $labels.virtualservice }}-{{.Labels.namespace}}").unwrap();
        assert_eq!(t.render(&labels()).unwrap(), "model-service-sms-app");
        assert_eq!(Template::parse("fixed").unwrap().literal(), Some("fixed"));
    }

    #[test]
    fn missing_or_empty_label_is_an_error_naming_it() {
        let t = Template::parse("{{ $labels.team }}").unwrap();
        assert_eq!(t.render(&labels()).unwrap_err().label, "team");
        let t = Template::parse("{{ $labels.empty }}").unwrap();
        assert_eq!(t.render(&labels()).unwrap_err().label, "empty");
    }

    #[test]
    fn bad_templates_are_refused_at_load() {
        assert!(matches!(Template::parse("{{ $labels.ns "), Err(TemplateError::Unclosed(_))));
        assert!(matches!(Template::parse("{{ .Value }}"), Err(TemplateError::Placeholder { .. })));
    }
}
