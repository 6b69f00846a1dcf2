//! HTML for the on-call page, built as strings by the server: every piece of text from outside
//! (alert labels, annotations, feedback fields, reasons, rule names) goes through [`esc`]; links
//! are built only from paths of our own with escaped path segments, never from a URL we were
//! given (a `generatorURL` is shown as text).

use std::fmt::Write;

/// `text` escaped for HTML text and double-quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment percent-encoded (then escaped, for an attribute).
pub fn seg(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A whole page: the title, the chain's line, the body.
pub fn page(title: &str, chain: &str, body: &str) -> String {
    live_page(title, chain, body, None)
}

/// A page whose `table.live` gets the records the stream sends: `stream` is the query string
/// (already encoded) and the seq to start after.
pub fn live_page(title: &str, chain: &str, body: &str, stream: Option<(&str, u64)>) -> String {
    let (attrs, script) = match stream {
        Some((filter, after)) => (
            format!(" data-stream=\"{}\" data-after=\"{after}\"", esc(filter)),
            "<script src=\"/ui/assets/ui.js\"></script>",
        ),
        None => (String::new(), ""),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · backstop</title><link rel=\"stylesheet\" href=\"/ui/assets/ui.css\"></head>\
         <body><header><a class=\"home\" href=\"/ui/\">backstop</a><span class=\"chain\">{}</span>\
         <span id=\"live\"></span></header><main{attrs}>{body}</main>{script}</body></html>\n",
        esc(title),
        esc(chain),
    )
}

/// A table: header cells, then rows of cells already rendered as HTML.
pub fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table class=\"{}\"><thead><tr>", esc(class));
    for h in head {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_is_escaped_and_segments_encoded() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(seg("a/b c\"<"), "a%2Fb%20c%22%3C");
        let p = page("<b>", "chain <ok>", "<p>body</p>");
        assert!(p.contains("<title>&lt;b&gt; · backstop</title>") && p.contains("chain &lt;ok&gt;"), "{p}");
    }
}
