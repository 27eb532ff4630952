//! Writing HTML by hand, safely: every value goes through `esc`, and pages share one frame.

use std::fmt::Write;

use crate::Viewer;

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

/// A value that may be absent as display text: a dash when it is.
pub fn dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

/// Escaped display text of a value that may be absent.
pub fn t(v: Option<&str>) -> String {
    esc(dash(v))
}

/// A status word as a coloured badge (the class is the word itself, from a fixed set in the CSS).
pub fn badge(value: &impl serde::Serialize) -> String {
    let word = crate::docs::word(value);
    let class: String = word.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("<span class=\"badge {class}\">{}</span>", esc(&word))
}

/// The first 12 characters of a commit id, escaped; a dash when there is none.
pub fn short(commit: Option<&str>) -> String {
    esc(crate::docs::short(dash(commit)))
}

/// Unix milliseconds as `2026-11-25 10:00:00 UTC`.
pub fn time(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    sdp_protocol::rfc3339(ms / 1000).replace('T', " ").replace('Z', " UTC")
}

/// A whole page: the header with the navigation and who is reading, then `body`.
pub fn page(base: &str, viewer: &Viewer, title: &str, body: &str) -> String {
    page_with(base, viewer, title, body.len(), |out| out.push_str(body))
}

/// A whole page whose body `write` writes in place: a long page (the overview of 1,000 sandboxes, 600 KB) is
/// then one string, not its rows, its table, its body and the page around it, each a copy of the one before.
/// `body_len` is about how long the body will be (room is made once; pages never written take no memory).
pub fn page_with(base: &str, viewer: &Viewer, title: &str, body_len: usize, write: impl FnOnce(&mut String)) -> String {
    frame(base, viewer, title, body_len, write, true)
}

/// A page whose header has no navigation (the login form: every link would lead back to it).
pub fn bare_page(base: &str, title: &str, body: &str) -> String {
    frame(
        base,
        &Viewer::default(),
        title,
        body.len(),
        |out| out.push_str(body),
        false,
    )
}

fn frame(
    base: &str,
    viewer: &Viewer,
    title: &str,
    body_len: usize,
    write: impl FnOnce(&mut String),
    nav: bool,
) -> String {
    let who = match &viewer.user {
        Some(user) => format!(
            "<form class=\"who\" method=\"post\" action=\"{base}/logout\"><span>{}</span> \
             <button type=\"submit\">Log out</button></form>",
            esc(user),
            base = esc(base),
        ),
        None => String::new(),
    };
    let nav = if nav {
        format!(
            "<nav aria-label=\"main\"><a href=\"{base}/\">Sandboxes</a><a href=\"{base}/deployments\">History</a>\
             <a href=\"{base}/nodes\">Nodes</a></nav>",
            base = esc(base)
        )
    } else {
        String::new()
    };
    let (title, base) = (esc(title), esc(base));
    let mut out = String::with_capacity(body_len + 1024);
    // `write!` to a String cannot fail.
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title} · SDP</title>\n\
         <link rel=\"stylesheet\" href=\"{base}/static/sdp.css\">\n</head>\n<body data-base=\"{base}\">\n\
         <header><strong>SDP</strong>{nav}<span class=\"muted\">read-only: changes go through git</span>{who}\
         </header>\n<main>\n"
    );
    write(&mut out);
    let _ = write!(
        out,
        "\n</main>\n<script src=\"{base}/static/sdp.js\"></script>\n</body>\n</html>\n"
    );
    out
}

/// A table from a header and rows of already-escaped cells.
pub fn table<R, C>(header: &[&str], rows: impl IntoIterator<Item = R>) -> String
where
    R: IntoIterator<Item = C>,
    C: AsRef<str>,
{
    let mut out = String::new();
    write_table(&mut out, header, rows);
    out
}

/// `table` written at the end of `out`, each row made as it is written (and dropped once it is).
pub fn write_table<R, C>(out: &mut String, header: &[&str], rows: impl IntoIterator<Item = R>)
where
    R: IntoIterator<Item = C>,
    C: AsRef<str>,
{
    out.push_str("<table>\n<thead><tr>");
    for h in header {
        out.push_str("<th scope=\"col\">");
        out.push_str(&esc(h));
        out.push_str("</th>");
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str("<td>");
            out.push_str(cell.as_ref());
            out.push_str("</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table>");
}
