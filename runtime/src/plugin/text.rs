//! Text a plugin hands the host, made bounded and safe to log or print.
//!
//! Every string a plugin returns (reasons, `init` messages, `describe` fields, `host.log`
//! lines) is arbitrary: megabytes long, with CR/LF that would forge complete log lines,
//! with terminal escapes or bidirectional overrides that make a line read as something
//! else. The host keeps only [`bounded`] text: cut to a limit (the cut is marked with
//! [`TRUNCATED`]) and with every such character [`escape`]d. It is applied once, where a
//! WIT value becomes a host value, so logs, events, hooks and the CLI all see the safe form.
//!
//! Backslashes are not escaped, so escaping is idempotent: the CLI may apply it again to
//! anything it prints on a plugin's behalf without mangling text that was already escaped.

use std::fmt::Write as _;

/// Longest reason or message kept from a plugin, in bytes of escaped text.
pub const MAX_TEXT: usize = 1024;
/// Longest name or version kept from a plugin's `describe`.
pub const MAX_NAME: usize = 128;
/// Longest `host.log` line (the WIT promises "about 4 KiB").
pub const MAX_LOG_LINE: usize = 4096;
/// Appended to text that was cut.
pub const TRUNCATED: &str = "…[truncated]";

/// `text` with control characters escaped and cut to at most `max` bytes plus
/// [`TRUNCATED`]. Reads at most about `max` bytes of `text`, so a multi-megabyte string
/// costs no more than a short one.
pub fn bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let before = out.len();
        push_escaped(&mut out, c);
        if out.len() > max {
            out.truncate(before);
            out.push_str(TRUNCATED);
            break;
        }
    }
    out
}

/// [`bounded`] for an owned string: returns it unchanged (no copy) when it is already short
/// and clean.
pub fn bounded_owned(text: String, max: usize) -> String {
    if text.len() <= max && !text.chars().any(needs_escape) {
        text
    } else {
        bounded(&text, max)
    }
}

/// `text` with every control character escaped, at any length: for text the host already
/// bounded, printed once more on a plugin's behalf.
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// Whether `c` could break a log line or change how a terminal shows the text: C0 and C1
/// controls (CR, LF, ESC, NEL, …), DEL, Unicode line and paragraph separators, and the
/// bidirectional formatting characters.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_clean_text_is_unchanged() {
        assert_eq!(bounded("connect refused", MAX_TEXT), "connect refused");
        assert_eq!(bounded_owned("ok".to_owned(), MAX_TEXT), "ok");
        assert_eq!(bounded("naïve ✓", MAX_TEXT), "naïve ✓");
        assert_eq!(escape("a\\nb"), "a\\nb", "backslashes are kept as they are");
    }

    #[test]
    fn line_breaks_and_controls_are_escaped() {
        let forged = "bad\r\n2026-01-01T00:00:00Z  INFO ssm_tether: all good\x1b[2J\u{85}\u{202e}";
        let safe = bounded(forged, MAX_TEXT);
        assert_eq!(
            safe,
            "bad\\r\\n2026-01-01T00:00:00Z  INFO ssm_tether: all good\\u{1b}[2J\\u{85}\\u{202e}"
        );
        assert!(!safe.chars().any(needs_escape));
        assert_eq!(escape(&safe), safe, "escaping is idempotent");
        assert_eq!(bounded_owned(forged.to_owned(), MAX_TEXT), safe);
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary_and_marked() {
        let huge = "é".repeat(4 << 20);
        let cut = bounded(&huge, 101);
        assert!(cut.ends_with(TRUNCATED), "{cut}");
        assert_eq!(cut.len(), 100 + TRUNCATED.len());
        assert_eq!(bounded_owned(huge, 101), cut);

        // An escape is never split by the cut.
        let newlines = "\n".repeat(100);
        let cut = bounded(&newlines, 11);
        assert_eq!(cut, format!("{}{TRUNCATED}", "\\n".repeat(5)));

        let exact = "x".repeat(MAX_TEXT);
        assert_eq!(bounded(&exact, MAX_TEXT), exact, "the limit itself is kept");
    }
}
