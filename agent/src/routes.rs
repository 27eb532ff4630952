//! The gateway's `config.php` routes: the `$config['<service>_url'] = '...';` entries, read and patched as text.
//!
//! Pure functions. Parsing finds each live entry (single or double quotes, any spacing, trailing comments;
//! entries inside `//`, `#` or `/* */` comments are not routes). Patching replaces only the bytes of the values
//! that change, so every other byte of the file stays as it was, and refuses a value that could leave the PHP
//! string.

use std::collections::BTreeMap;
use std::ops::Range;

/// One live `<service>_url` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `account` for `$config['account_url']`.
    pub service: String,
    pub value: String,
    /// Byte span of the value between its quotes.
    pub span: Range<usize>,
    pub quote: u8,
}

/// The live entries of a file; a key set twice counts at its last assignment, as PHP does.
pub fn parse(text: &str) -> Vec<Entry> {
    let b = text.as_bytes();
    let mut out: Vec<Entry> = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_line(b, i),
            b'#' => i = skip_line(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = find(b, i + 2, b"*/").map_or(b.len(), |e| e + 2);
            }
            b'\'' | b'"' => i = skip_string(b, i),
            b'$' => match entry_at(text, i) {
                Some((entry, end)) => {
                    out.retain(|e| e.service != entry.service);
                    out.push(entry);
                    i = end;
                }
                None => i += 1,
            },
            _ => i += 1,
        }
    }
    out
}

/// The map `service -> value` of a file.
pub fn routes(text: &str) -> BTreeMap<String, String> {
    parse(text).into_iter().map(|e| (e.service, e.value)).collect()
}

fn skip_line(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|c| *c == b'\n').map_or(b.len(), |p| i + p + 1)
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The end of the quoted string starting at `i` (escapes honoured).
fn skip_string(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            c if c == q => return j + 1,
            _ => j += 1,
        }
    }
    b.len()
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `$config [ 'x_url' ] = 'value' ;` at `i`, with the end of the statement.
fn entry_at(text: &str, i: usize) -> Option<(Entry, usize)> {
    let b = text.as_bytes();
    let rest = b.get(i..)?;
    if !rest.starts_with(b"$config") {
        return None;
    }
    let mut j = i + "$config".len();
    if b.get(j).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
        return None;
    }
    j = skip_space(b, j);
    if b.get(j) != Some(&b'[') {
        return None;
    }
    j = skip_space(b, j + 1);
    let (key, _, after_key) = literal(text, j)?;
    j = skip_space(b, after_key);
    if b.get(j) != Some(&b']') {
        return None;
    }
    j = skip_space(b, j + 1);
    if b.get(j) != Some(&b'=') || b.get(j + 1) == Some(&b'=') {
        return None;
    }
    j = skip_space(b, j + 1);
    let quote = *b.get(j)?;
    let (value, span, after_value) = literal(text, j)?;
    j = skip_space(b, after_value);
    if b.get(j) != Some(&b';') {
        return None;
    }
    let service = key.strip_suffix("_url")?.to_string();
    if service.is_empty() {
        return None;
    }
    Some((
        Entry {
            service,
            value,
            span,
            quote,
        },
        j + 1,
    ))
}

/// A PHP string literal at `i` without interpolation: its value, the span of its contents, and its end.
fn literal(text: &str, i: usize) -> Option<(String, Range<usize>, usize)> {
    let b = text.as_bytes();
    let q = *b.get(i)?;
    if q != b'\'' && q != b'"' {
        return None;
    }
    let end = skip_string(b, i);
    if end > b.len() || b.get(end - 1) != Some(&q) || end == i + 1 {
        return None;
    }
    let inner = &text[i + 1..end - 1];
    // Values with escapes or (in double quotes) interpolation are not plain URLs: left alone.
    if inner.contains('\\') || (q == b'"' && inner.contains('$')) {
        return None;
    }
    Some((inner.to_string(), i + 1..end - 1, end))
}

/// Why a value cannot be written into config.php.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("an empty URL".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| matches!(c, '\'' | '"' | '\\' | '$' | '`') || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{value:?} holds {c:?}, which could leave the PHP string"));
    }
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(format!("{value:?} is not an http(s) URL"));
    }
    Ok(())
}

/// Sets each `service -> value` of `wanted` whose entry exists, changing only the value bytes. Refuses unknown
/// services and unsafe values; the text is untouched on any refusal.
pub fn patch(text: &str, wanted: &BTreeMap<String, String>) -> Result<String, String> {
    let entries = parse(text);
    let mut edits: Vec<(Range<usize>, &str)> = Vec::new();
    for (service, value) in wanted {
        check_value(value).map_err(|e| format!("route {service}: {e}"))?;
        let Some(entry) = entries.iter().find(|e| &e.service == service) else {
            return Err(format!(
                "config.php has no live `$config['{service}_url']` entry to route {service}"
            ));
        };
        if &entry.value != value {
            edits.push((entry.span.clone(), value));
        }
    }
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, value) in edits {
        out.push_str(&text[at..span.start]);
        out.push_str(value);
        at = span.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"<?php
defined('BASEPATH') OR exit('No direct script access allowed');
// $config['old_url'] = 'http://commented:1';
# $config['hash_url'] = 'http://hash:1';
/* $config['block_url'] = 'http://block:1';
   more */
$config['account_url'] = 'http://account.ocp:8080'; // the OCP route
$config ['payment_url']="http://payment.ocp:8080" ;
$config[ "user_url" ]  =   'http://user.ocp:8080';  # trailing
$config['base_url'] = 'http://gateway';
$config['log_threshold'] = 1;
$config['note'] = 'a $config[\'fake_url\'] = \'x\'; inside a string';
"#;

    #[test]
    fn live_entries_are_found_and_comments_are_not_routes() {
        let map = routes(FILE);
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, ["account", "base", "payment", "user"]);
        assert_eq!(map["payment"], "http://payment.ocp:8080");
        assert_eq!(map["user"], "http://user.ocp:8080");
    }

    #[test]
    fn patching_changes_only_the_value_bytes() {
        let wanted: BTreeMap<String, String> = [
            ("account".to_string(), "http://172.18.136.92:9001".to_string()),
            ("payment".to_string(), "http://payment.ocp:8080".to_string()),
        ]
        .into();
        let out = patch(FILE, &wanted).unwrap();
        assert_eq!(
            out,
            FILE.replace("http://account.ocp:8080", "http://172.18.136.92:9001")
        );
        assert_eq!(routes(&out)["account"], "http://172.18.136.92:9001");
    }

    #[test]
    fn unsafe_values_and_unknown_services_are_refused() {
        for bad in [
            "http://x'; system('id'); '",
            "http://x\"",
            "http://$HOME",
            "ftp://x",
            "http://a b",
            "",
        ] {
            let wanted = [("account".to_string(), bad.to_string())].into();
            assert!(patch(FILE, &wanted).is_err(), "{bad:?} was accepted");
        }
        let wanted = [("nobody".to_string(), "http://x:1".to_string())].into();
        assert!(
            patch(FILE, &wanted)
                .unwrap_err()
                .contains("no live `$config['nobody_url']`")
        );
        let wanted = [("old".to_string(), "http://x:1".to_string())].into();
        assert!(patch(FILE, &wanted).is_err(), "a commented-out entry is not patched");
    }

    #[test]
    fn a_corpus_of_realistic_files_reads_as_expected() {
        let ci = include_str!("../tests/fixtures/config-php/codeigniter.php");
        let map = routes(ci);
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, ["account", "base", "card_limit", "payment", "user"]);
        assert_eq!(map["base"], "", "an empty value is read as empty");
        assert_eq!(map["card_limit"], "http://card-limit-svc.cc-dev.apps.ocp.internal:8080");
        let patched = patch(
            ci,
            &[("user".to_string(), "http://172.18.136.92:9003".to_string())].into(),
        )
        .unwrap();
        assert_eq!(
            patched.len(),
            ci.len() - "http://user-svc.cc-dev.apps.ocp.internal:8080".len() + 25
        );
        assert!(patched.contains("$config['user_url'] = 'http://172.18.136.92:9003'; // ticket CC-1042"));

        let edge = include_str!("../tests/fixtures/config-php/edge-cases.php");
        let map = routes(edge);
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        // `escaped` has an escape in its value: not a plain URL, never patched. The conditional one is live PHP.
        assert_eq!(keys, ["conditional", "loan", "notification"]);
        assert_eq!(map["notification"], "http://second:2");
        let patched = patch(
            edge,
            &[("notification".to_string(), "http://third:3".to_string())].into(),
        )
        .unwrap();
        assert!(
            patched.contains("'http://first:1'"),
            "the earlier, dead assignment is left as it was"
        );
        assert!(patched.contains("$config['notification_url'] = 'http://third:3';   # the last"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One line of a generated config.php: a live route, a commented-out one, another setting, or noise.
        #[derive(Clone, Debug)]
        enum Line {
            Route {
                service: usize,
                value: String,
                double: bool,
                spaces: usize,
                trailing: bool,
            },
            Commented(usize),
            Setting(String),
            Blank,
        }

        const SERVICES: [&str; 4] = ["account", "payment", "user", "card"];

        fn url() -> impl Strategy<Value = String> {
            ("[a-z]{1,8}", 1u16..65535).prop_map(|(host, port)| format!("http://{host}.ocp:{port}"))
        }

        fn line() -> impl Strategy<Value = Line> {
            prop_oneof![
                (0..4usize, url(), any::<bool>(), 0..3usize, any::<bool>()).prop_map(
                    |(service, value, double, spaces, trailing)| Line::Route {
                        service,
                        value,
                        double,
                        spaces,
                        trailing
                    }
                ),
                (0..4usize).prop_map(Line::Commented),
                "[a-z_]{1,10}".prop_map(Line::Setting),
                Just(Line::Blank),
            ]
        }

        fn render(lines: &[Line]) -> String {
            let mut out = String::from("<?php\n");
            for l in lines {
                match l {
                    Line::Route {
                        service,
                        value,
                        double,
                        spaces,
                        trailing,
                    } => {
                        let q = if *double { '"' } else { '\'' };
                        let sp = " ".repeat(*spaces);
                        out.push_str(&format!(
                            "$config[{q}{}_url{q}]{sp}={sp}{q}{value}{q};",
                            SERVICES[*service]
                        ));
                        if *trailing {
                            out.push_str(" // was changed by hand");
                        }
                        out.push('\n');
                    }
                    Line::Commented(s) => {
                        out.push_str(&format!("// $config['{}_url'] = 'http://old:1';\n", SERVICES[*s]))
                    }
                    Line::Setting(name) => out.push_str(&format!("$config['{name}'] = 'x';\n")),
                    Line::Blank => out.push('\n'),
                }
            }
            out
        }

        proptest! {
            /// A branch's config.php is anything its pusher committed, or what a container wrote: parsing and
            /// patching any text never panics, and a patch that succeeds parses back to what was asked.
            #[test]
            fn any_text_parses_and_patches_without_a_panic(
                text in proptest::collection::vec(
                    prop_oneof![
                        any::<char>().prop_map(|c| c.to_string()),
                        Just("$config['".to_string()),
                        Just("_url'] = '".to_string()),
                        Just("';\n".to_string()),
                        Just("/*".to_string()),
                        Just("*/".to_string()),
                        Just("\\'".to_string()),
                        Just("<?php\n".to_string()),
                    ],
                    0..200,
                ).prop_map(|parts| parts.concat()),
                changes in proptest::collection::btree_map(0..4usize, url(), 0..3),
            ) {
                let _ = routes(&text);
                let wanted: BTreeMap<String, String> =
                    changes.iter().map(|(s, u)| (SERVICES[*s].to_string(), u.clone())).collect();
                if let Ok(patched) = patch(&text, &wanted) {
                    let back = routes(&patched);
                    for (service, url) in &wanted {
                        prop_assert_eq!(back.get(service), Some(url));
                    }
                }
            }

            #[test]
            fn patch_then_parse_gives_the_new_map_and_keeps_every_other_byte(
                lines in proptest::collection::vec(line(), 0..20),
                changes in proptest::collection::btree_map(0..4usize, url(), 0..4),
            ) {
                let text = render(&lines);
                let before = parse(&text);
                let live: BTreeMap<String, String> = before.iter().map(|e| (e.service.clone(), e.value.clone())).collect();
                let wanted: BTreeMap<String, String> = changes
                    .into_iter()
                    .map(|(i, v)| (SERVICES[i].to_string(), v))
                    .filter(|(k, _)| live.contains_key(k))
                    .collect();
                let patched = patch(&text, &wanted).unwrap();
                let mut expected = live.clone();
                expected.extend(wanted.clone());
                prop_assert_eq!(routes(&patched), expected);
                // Outside the changed values, the bytes are the same: remove every changed span from both
                // texts and compare what is left.
                let strip = |t: &str, entries: &[Entry]| -> String {
                    let mut spans: Vec<Range<usize>> = entries
                        .iter()
                        .filter(|e| wanted.get(&e.service).is_some_and(|v| *v != live[&e.service]))
                        .map(|e| e.span.clone())
                        .collect();
                    spans.sort_by_key(|s| s.start);
                    let mut out = String::new();
                    let mut at = 0;
                    for s in spans {
                        out.push_str(&t[at..s.start]);
                        at = s.end;
                    }
                    out.push_str(&t[at..]);
                    out
                };
                prop_assert_eq!(strip(&text, &before), strip(&patched, &parse(&patched)));
            }

            #[test]
            fn parsing_never_panics(text in "\\PC{0,400}") {
                let _ = parse(&text);
            }
        }
    }
}
