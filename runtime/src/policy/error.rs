//! Errors of the policy file, each pointing at `file:line:column`.
//!
//! Every message names where (file, line, column), what (the field path, e.g.
//! `tunnel[1].remote_port`) and the offending value as written in the file, because a user who
//! gets `invalid port` without knowing which of twelve tunnels it is will not enjoy the tool.

use std::fmt;
use std::ops::Range;

/// A position in a policy file, printed as `name:line:column` (both 1-based; the column counts
/// characters, not bytes, so it matches what editors show).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file name as given to [`crate::policy::load`] or [`crate::policy::parse`].
    pub source_name: String,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text` (clamped to the end of `text`).
    pub(crate) fn at(source_name: &str, text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        // Spans from the parser always fall on char boundaries, but be defensive: a location
        // must never panic.
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        Self {
            source_name: source_name.to_owned(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source_name, self.line, self.column)
    }
}

/// Why a policy file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{path}: cannot read policy file: {source}")]
    Read {
        /// The path as given.
        path: String,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML.
    #[error("{at}: TOML syntax error: {message}")]
    Syntax {
        /// Where the parser stopped.
        at: Location,
        /// The parser's explanation.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type, or its value is out of range or malformed.
    #[error("{at}: {field}: {message}")]
    Invalid {
        /// Where the bad key or value is.
        at: Location,
        /// The field path, e.g. `tunnel[1].remote_port` or `defaults.recovery.max_delay`.
        field: String,
        /// What is wrong, quoting the value as written.
        message: String,
    },
    /// Two tunnels clash (same name, same local address); the message names both.
    #[error("{at}: {field}: {message}")]
    Conflict {
        /// Where the second of the two clashing tunnels sets the value.
        at: Location,
        /// The field path of the second tunnel's value.
        field: String,
        /// What clashes, naming both tunnels.
        message: String,
    },
}

impl PolicyError {
    /// The location the error points at, if it points into the file.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Read { .. } => None,
            Self::Syntax { at, .. } | Self::Invalid { at, .. } | Self::Conflict { at, .. } => {
                Some(at)
            }
        }
    }

    /// The field path the error is about, if any (`tunnel[0].local` …).
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } | Self::Conflict { field, .. } => Some(field),
            Self::Read { .. } | Self::Syntax { .. } => None,
        }
    }
}

/// Builds located errors for one source text.
pub(crate) struct Source<'a> {
    pub(crate) name: &'a str,
    pub(crate) text: &'a str,
}

/// Longest excerpt of a bad value quoted in an error message; a pasted certificate should not
/// flood the terminal.
const MAX_QUOTE: usize = 80;

impl Source<'_> {
    pub(crate) fn location(&self, offset: usize) -> Location {
        Location::at(self.name, self.text, offset)
    }

    /// The value exactly as written in the file (quotes included for strings), shortened.
    pub(crate) fn quote(&self, span: &Range<usize>) -> String {
        let raw = self
            .text
            .get(span.clone())
            .unwrap_or("")
            .trim()
            .replace('\n', " ");
        if raw.chars().count() > MAX_QUOTE {
            let cut: String = raw.chars().take(MAX_QUOTE).collect();
            format!("{cut}…")
        } else {
            raw
        }
    }

    pub(crate) fn invalid(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            at: self.location(span.start),
            field: field.into(),
            message: message.into(),
        }
    }

    /// `invalid` with the value quoted first: `<value> <message>`.
    pub(crate) fn bad_value(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> PolicyError {
        let quoted = self.quote(span);
        self.invalid(span, field, format!("{quoted} {message}"))
    }

    pub(crate) fn conflict(
        &self,
        span: &Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Conflict {
            at: self.location(span.start),
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn syntax(&self, err: &toml::de::Error) -> PolicyError {
        let offset = err.span().map_or(0, |s| s.start);
        PolicyError::Syntax {
            at: self.location(offset),
            // The toml crate's Display is a multi-line snippet; the bare message keeps our
            // one-line `file:line:col: …` format.
            message: err.message().trim().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_chars() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(Location::at("f", text, 0).to_string(), "f:1:1");
        // 'b' 'é' ' ' '=' ' ' then the quote at byte 11 (é is two bytes) → column 6.
        let q = text.find('"').unwrap_or(0);
        assert_eq!(Location::at("f", text, q).to_string(), "f:2:6");
        assert_eq!(Location::at("f", text, 10_000).line, 3);
    }
}
