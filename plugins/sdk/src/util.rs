//! Plain-Rust helpers, no bindings: everything here is tested natively with `cargo test`.
//!
//! * [`from_json`]: the JSON object a plugin's `init` receives (the policy file's `config`
//!   table) into a typed, `serde`-deserialized config, with errors that name the key.
//! * [`Config`]: the same object read key by key, for hand-written validation.
//! * [`Clock`] and [`Deadline`]: time budgets for probes, with a fake clock in tests.
//! * [`escape_bytes`]: bytes from the network, printable and bounded, for reasons and logs.

use std::collections::BTreeSet;

use serde_core::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Deserializes `init`'s JSON (the policy file's `config` table) into `T` with `serde`.
///
/// An empty string is `{}` (no `config` table). Errors name the key: an unknown key (with
/// `#[serde(deny_unknown_fields)]`) as ``unknown config key `pasword` (did you mean
/// `password`?); known keys: …``, a wrong value as
/// `` `connect_timeout_ms`: invalid value: integer, expected u32 ``. Values are never echoed
/// (a config may hold secrets).
///
/// ```
/// use serde::Deserialize;
///
/// #[derive(Debug, Deserialize)]
/// #[serde(deny_unknown_fields, default)]
/// struct Settings {
///     connect_timeout_ms: u32,
///     password: Option<String>,
/// }
///
/// impl Default for Settings {
///     fn default() -> Self {
///         Self { connect_timeout_ms: 2_000, password: None }
///     }
/// }
///
/// let settings: Settings = ssm_tether_plugin::from_json("").unwrap();
/// assert_eq!(settings.connect_timeout_ms, 2_000);
///
/// let err = ssm_tether_plugin::from_json::<Settings>(r#"{"pasword": "hunter2"}"#).unwrap_err();
/// assert!(err.starts_with("unknown config key `pasword` (did you mean `password`?)"), "{err}");
/// assert!(!err.contains("hunter2"));
///
/// let err = ssm_tether_plugin::from_json::<Settings>(r#"{"connect_timeout_ms": -1}"#).unwrap_err();
/// assert_eq!(err, "`connect_timeout_ms`: invalid value: integer, expected u32");
///
/// let err = ssm_tether_plugin::from_json::<Settings>(r#"{"password": 1234}"#).unwrap_err();
/// assert_eq!(err, "`password`: invalid type: integer, expected a string");
/// ```
pub fn from_json<T: DeserializeOwned>(json: &str) -> Result<T, String> {
    let json = json.trim();
    let value: Value = if json.is_empty() {
        Value::Object(Map::new())
    } else {
        serde_json::from_str(json).map_err(|e| format!("config is not valid JSON: {e}"))?
    };
    if !value.is_object() {
        return Err(format!(
            "config must be a table (a JSON object), got {}",
            describe(&value)
        ));
    }
    let Value::Object(map) = value else {
        unreachable!("checked above")
    };
    T::deserialize(Keyed::new(map)).map_err(|err| {
        let message = err.to_string();
        match unknown_key(&message) {
            Some(message) => message,
            None => without_values(&message),
        }
    })
}

/// A deserializer for the config object that prefixes every error about a value with its
/// key (`` `read_timeout_ms`: … ``), so a derived config's errors name the key.
struct Keyed {
    entries: serde_json::map::IntoIter,
    value: Option<(String, Value)>,
}

impl Keyed {
    fn new(map: Map<String, Value>) -> Self {
        Self {
            entries: map.into_iter(),
            value: None,
        }
    }
}

impl<'de> serde_core::Deserializer<'de> for Keyed {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde_core::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(self)
    }

    serde_core::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> serde_core::de::MapAccess<'de> for Keyed {
    type Error = serde_json::Error;

    fn next_key_seed<K: serde_core::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        let parsed = seed.deserialize(
            serde_core::de::value::StrDeserializer::<Self::Error>::new(&key),
        )?;
        self.value = Some((key, value));
        Ok(Some(parsed))
    }

    fn next_value_seed<V: serde_core::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((key, value)) = self.value.take() else {
            return Err(serde_core::de::Error::custom("a value without a key"));
        };
        seed.deserialize(value).map_err(|err| {
            let message = err.to_string();
            let message = match unknown_key(&message) {
                Some(message) => format!("in `{key}`: {message}"),
                None => format!("`{key}`: {}", without_values(&message)),
            };
            serde_core::de::Error::custom(message)
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// serde's "invalid type: string \"s3cret\", expected u32" without the value (a config may
/// hold secrets): "invalid type: string, expected u32".
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((found, expected)) = rest.split_once(", expected ")
            && !found.starts_with('`')
        {
            let kind = found.split(['`', '"']).next().unwrap_or(found).trim_end();
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    message.to_owned()
}

/// serde's "unknown field `x`, expected one of `a`, `b`" in this crate's words, with a
/// "did you mean" hint.
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field ")?;
    let quoted: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let (key, known) = quoted.split_first()?;
    let hint = closest(key, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default();
    Some(format!(
        "unknown config key `{key}`{hint}; known keys: {}",
        known.join(", ")
    ))
}

/// A plugin's configuration: a JSON object whose keys are checked against a known list.
#[derive(Debug, Clone)]
pub struct Config {
    map: Map<String, Value>,
}

impl Config {
    /// Parses `json` (what `init` receives) and rejects keys not in `known`.
    ///
    /// An empty string is treated as `{}` (no `config` table in the policy file).
    pub fn parse(json: &str, known: &[&str]) -> Result<Self, String> {
        let json = json.trim();
        let value: Value = if json.is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(json).map_err(|e| format!("config is not valid JSON: {e}"))?
        };
        let Value::Object(map) = value else {
            return Err(format!(
                "config must be a table (a JSON object), got {}",
                describe(&value)
            ));
        };
        let unknown: BTreeSet<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect();
        if let Some(first) = unknown.first() {
            let hint = closest(first, known)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "unknown config key `{first}`{hint}; known keys: {}",
                known.join(", ")
            ));
        }
        Ok(Self { map })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A non-negative integer, e.g. milliseconds. `None` when absent (or `null`).
    pub fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                format!(
                    "`{key}` must be a non-negative integer, got {}",
                    describe(v)
                )
            }),
        }
    }

    /// A non-negative integer that fits in 32 bits.
    pub fn u32(&self, key: &str) -> Result<Option<u32>, String> {
        match self.u64(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| format!("`{key}` must be at most {}, got {n}", u32::MAX)),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(format!("`{key}` must be a string, got {}", describe(v))),
        }
    }

    /// One of `allowed` (a string).
    pub fn choice(
        &self,
        key: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, String> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(&s))
                .copied()
                .map(Some)
                .ok_or_else(|| format!("`{key}` must be one of {}, got {s:?}", allowed.join(", "))),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "`{key}[{i}]` must be a string, got {}",
                        describe(other)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!(
                "`{key}` must be an array of strings, got {}",
                describe(v)
            )),
        }
    }

    /// A table of string values, in key order.
    pub fn string_table(&self, key: &str) -> Result<Option<Vec<(String, String)>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    other => Err(format!(
                        "`{key}.{k}` must be a string, got {}",
                        describe(other)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(format!(
                "`{key}` must be a table of strings, got {}",
                describe(v)
            )),
        }
    }
}

/// A short description of a JSON value for error messages: its type and, when small, itself.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_owned(),
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => return "an array".to_owned(),
        Value::Object(_) => return "a table".to_owned(),
    };
    let mut text = v.to_string();
    if text.len() > 40 {
        text.truncate(37);
        text.push_str("...");
    }
    format!("{kind} ({text})")
}

/// The known key closest to `key` (edit distance ≤ 3), for "did you mean" hints.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A monotonic millisecond clock. The plugins use [`SystemClock`]; tests use a fake.
pub trait Clock {
    /// Milliseconds since an arbitrary fixed point.
    fn now_ms(&self) -> u64;
}

/// The real monotonic clock (`wasi:clocks/monotonic-clock` inside a component).
#[derive(Debug)]
pub struct SystemClock(std::time::Instant);

impl SystemClock {
    /// Starts measuring now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A point in time by which a probe must be done.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at_ms: u64,
}

impl Deadline {
    /// `budget_ms` from now.
    pub fn after(clock: &dyn Clock, budget_ms: u64) -> Self {
        Self {
            at_ms: clock.now_ms().saturating_add(budget_ms),
        }
    }

    /// Milliseconds left, at most `cap_ms`; 0 once passed.
    pub fn remaining(&self, clock: &dyn Clock, cap_ms: u32) -> u32 {
        let left = self.at_ms.saturating_sub(clock.now_ms());
        u32::try_from(left).unwrap_or(u32::MAX).min(cap_ms)
    }
}

/// The host's call budget minus a safety margin (a tenth, at least 20 ms), so a probe
/// answers before the host abandons the call.
pub fn usable_budget_ms(budget_ms: u32) -> u64 {
    let budget = u64::from(budget_ms);
    if budget == 0 {
        return u64::MAX;
    }
    budget.saturating_sub((budget / 10).max(20)).max(1)
}

/// Bytes as printable text, at most `max` input bytes: ASCII printable as is, the rest as
/// `\n`, `\r`, `\t` or `\xNN`; `...` when cut.
pub fn escape_bytes(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
}

/// Decodes hexadecimal text (whitespace and `:` between bytes allowed), e.g. `"52 45 44"`.
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".to_owned());
    }
    digits
        .chunks(2)
        .map(|pair| {
            let hi = hex_digit(pair[0])?;
            let lo = hex_digit(pair[1])?;
            Ok(hi << 4 | lo)
        })
        .collect()
}

fn hex_digit(b: u8) -> Result<u8, String> {
    match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(format!("`{}` is not a hex digit", char::from(b))),
    }
}

/// A fake clock for tests: time moves only when told.
#[derive(Debug, Default)]
pub struct FakeClock(std::cell::Cell<u64>);

impl FakeClock {
    /// Moves time forward.
    pub fn advance(&self, ms: u64) {
        self.0.set(self.0.get() + ms);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["base_ms", "cap_ms", "mode", "tags", "headers"];

    #[test]
    fn empty_and_missing_config_is_an_empty_table() {
        for text in ["", "  ", "{}"] {
            let config = Config::parse(text, KNOWN).expect(text);
            assert_eq!(config.u64("base_ms"), Ok(None));
        }
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::parse(r#"{"bas_ms": 5}"#, KNOWN).unwrap_err();
        assert!(
            err.contains("`bas_ms`") && err.contains("did you mean `base_ms`"),
            "{err}"
        );
        let config = Config::parse(r#"{"base_ms": "5s", "cap_ms": -1, "mode": 3}"#, KNOWN)
            .expect("known keys");
        let err = config.u64("base_ms").unwrap_err();
        assert!(err.contains("`base_ms`") && err.contains("\"5s\""), "{err}");
        let err = config.u64("cap_ms").unwrap_err();
        assert!(
            err.contains("`cap_ms`") && err.contains("negative"),
            "{err}"
        );
        let err = config.choice("mode", &["json", "logfmt"]).unwrap_err();
        assert!(
            err.contains("`mode`") && err.contains("a number (3)"),
            "{err}"
        );
        let err = Config::parse(r#"{"mode": "xml"}"#, KNOWN)
            .and_then(|c| c.choice("mode", &["json", "logfmt"]).map(|_| ()))
            .unwrap_err();
        assert!(
            err.contains("`mode`") && err.contains("json, logfmt"),
            "{err}"
        );
    }

    #[test]
    fn not_an_object_or_not_json_is_rejected() {
        assert!(Config::parse("[1]", KNOWN).unwrap_err().contains("table"));
        assert!(
            Config::parse("{", KNOWN)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }

    #[test]
    fn typed_getters() {
        let config = Config::parse(
            r#"{"base_ms": 7, "mode": "JSON", "tags": ["a", "b"], "headers": {"X-A": "1"}, "cap_ms": null}"#,
            KNOWN,
        )
        .expect("valid");
        assert_eq!(config.u32("base_ms"), Ok(Some(7)));
        assert_eq!(config.u64("cap_ms"), Ok(None));
        assert_eq!(config.choice("mode", &["json", "logfmt"]), Ok(Some("json")));
        assert_eq!(
            config.strings("tags"),
            Ok(Some(vec!["a".to_owned(), "b".to_owned()]))
        );
        assert_eq!(
            config.string_table("headers"),
            Ok(Some(vec![("X-A".to_owned(), "1".to_owned())]))
        );
        let err = Config::parse(r#"{"tags": ["a", 1]}"#, KNOWN)
            .and_then(|c| c.strings("tags"))
            .unwrap_err();
        assert!(err.contains("`tags[1]`"), "{err}");
    }

    #[test]
    fn deadlines_count_down() {
        let clock = FakeClock::default();
        let deadline = Deadline::after(&clock, 1000);
        assert_eq!(deadline.remaining(&clock, 5000), 1000);
        assert_eq!(deadline.remaining(&clock, 300), 300);
        clock.advance(900);
        assert_eq!(deadline.remaining(&clock, 5000), 100);
        clock.advance(200);
        assert_eq!(deadline.remaining(&clock, 5000), 0);
        assert_eq!(usable_budget_ms(1000), 900);
        assert_eq!(usable_budget_ms(100), 80);
        assert_eq!(usable_budget_ms(0), u64::MAX);
    }

    #[test]
    fn bytes_are_escaped_and_hex_decoded() {
        assert_eq!(escape_bytes(b"SSH-2.0\r\n\x00", 64), "SSH-2.0\\r\\n\\x00");
        assert_eq!(escape_bytes(b"abcdef", 3), "abc...");
        assert_eq!(decode_hex("52 45:44 0a"), Ok(b"RED\n".to_vec()));
        assert!(decode_hex("5").is_err());
        assert!(decode_hex("zz").is_err());
    }
}
