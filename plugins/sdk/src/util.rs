//! Plain-Rust helpers, no bindings: everything here is tested natively with `cargo test`.
//!
//! * [`from_json`]: the JSON object a plugin's `init` receives (the policy file's `config`
//!   table) into a typed, `serde`-deserialized config, with errors that name the key.
//! * [`Config`]: the same object read key by key, for hand-written validation.
//! * [`Clock`] and [`Deadline`]: time budgets for probes, with a fake clock in tests.
//! * [`escape_bytes`]: bytes from the network, printable and bounded, for reasons and logs.

use serde_core::de::DeserializeOwned;
use serde_json::{Map, Value};

// One implementation with the test fixtures' helper crate (`../common`): the SDK re-exports
// its config reader, clocks and byte helpers, and adds the serde-based `from_json`, whose
// errors are worded by that reader (`Config::parse`) wherever the two agree.
pub use plugin_common::{
    Clock, Config, Deadline, FakeClock, SystemClock, decode_hex, escape_bytes, usable_budget_ms,
};

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
    let parsed = if json.is_empty() {
        Ok(Value::Object(Map::new()))
    } else {
        serde_json::from_str(json)
    };
    let Ok(Value::Object(map)) = parsed else {
        // Not JSON, or not an object: `Config::parse` says which ("config is not valid JSON:
        // …", "config must be a table (a JSON object), got …"), and always fails here.
        return Err(Config::parse(json, &[])
            .err()
            .unwrap_or_else(|| "config must be a table (a JSON object)".to_owned()));
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
    // `Config::parse`'s own error for this key, "did you mean" hint included.
    let mut object = Map::new();
    object.insert((*key).to_owned(), Value::Null);
    Config::parse(&Value::Object(object).to_string(), known).err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;

    impl<'de> serde_core::Deserialize<'de> for Nothing {
        fn deserialize<D: serde_core::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_ignored_any(serde_core::de::IgnoredAny)?;
            Ok(Self)
        }
    }

    #[test]
    fn not_an_object_is_worded_by_the_config_reader() {
        let err = from_json::<Nothing>("[1, 2]").unwrap_err();
        assert_eq!(err, "config must be a table (a JSON object), got an array");
        let err = from_json::<Nothing>("{").unwrap_err();
        assert!(err.starts_with("config is not valid JSON: "), "{err}");
        assert!(from_json::<Nothing>("  ").is_ok());
    }

    #[test]
    fn unknown_field_messages_become_unknown_config_keys() {
        assert_eq!(
            unknown_key("unknown field `bas_ms`, expected one of `base_ms`, `cap_ms`").as_deref(),
            Some(
                "unknown config key `bas_ms` (did you mean `base_ms`?); known keys: base_ms, cap_ms"
            )
        );
        assert_eq!(
            unknown_key("unknown field `x`, there are no fields").as_deref(),
            Some("unknown config key `x`; known keys: ")
        );
        assert_eq!(unknown_key("invalid type: string, expected u32"), None);
    }
}
