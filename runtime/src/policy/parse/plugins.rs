//! The plugin tables of a tunnel or of `[defaults]`: `[reconnect]`, `[[health_check]]`,
//! `[[hook]]`.

use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::DeValue;

use super::{Result, TableReader, with_article};
use crate::builtin;
use crate::policy::{
    BUILTIN_PREFIX, DEFAULT_PROBE_INTERVAL, DEFAULT_UNHEALTHY_AFTER, Grants, HealthCheckSpec,
    PluginSource, PluginSpec, Role, Sha256Pin,
};

/// Keys of every plugin entry.
const PLUGIN_KEYS: &[&str] = &[
    "plugin",
    "config",
    "memory_mb",
    "cpu",
    "timeout",
    "grants",
    "sha256",
];
/// Extra keys of a health check.
const HEALTH_KEYS: &[&str] = &["interval", "unhealthy_after"];
/// Smallest memory cap that lets a Rust component instantiate (its initial memory is ~1 MiB).
const MIN_MEMORY_MB: i64 = 2;
const MAX_MEMORY_MB: i64 = 4096;

/// The plugin tables written in one layer (`[defaults]` or a tunnel); a tunnel's table for a
/// role replaces `[defaults]`' table for that role.
#[derive(Debug, Default)]
pub(super) struct PluginLayer {
    pub(super) reconnect: Option<PluginSpec>,
    pub(super) health_checks: Option<Vec<HealthCheckSpec>>,
    pub(super) hooks: Option<Vec<PluginSpec>>,
}

pub(super) fn read_plugins(table: &TableReader<'_, '_, '_>) -> Result<PluginLayer> {
    let reconnect = match table.table("reconnect")? {
        Some(entry) => Some(read_entry(&entry, Role::ReconnectPolicy, &[])?),
        None => None,
    };
    let health_checks = read_array(table, "health_check", |entry| {
        let plugin = read_entry(entry, Role::HealthCheck, HEALTH_KEYS)?;
        let interval = entry
            .duration("interval", false)?
            .map_or(DEFAULT_PROBE_INTERVAL, |d| d.value);
        let unhealthy_after = match entry.integer("unhealthy_after")? {
            Some(n) => u32::try_from(n.value)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| {
                    entry.src.bad_value(
                        &n.span,
                        &n.field,
                        "must be at least 1 (and fit in 32 bits)",
                    )
                })?,
            None => DEFAULT_UNHEALTHY_AFTER,
        };
        Ok(HealthCheckSpec {
            plugin,
            interval,
            unhealthy_after,
        })
    })?;
    let hooks = read_array(table, "hook", |entry| {
        read_entry(entry, Role::EventHook, &[])
    })?;
    Ok(PluginLayer {
        reconnect,
        health_checks,
        hooks,
    })
}

fn read_array<T>(
    table: &TableReader<'_, '_, '_>,
    key: &str,
    mut read: impl FnMut(&TableReader<'_, '_, '_>) -> Result<T>,
) -> Result<Option<Vec<T>>> {
    let Some(value) = table.get(key) else {
        return Ok(None);
    };
    let DeValue::Array(items) = value.get_ref() else {
        return Err(table.type_error(key, value, &format!("an array of tables ([[{key}]])")));
    };
    let mut out = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = format!("{}[{index}]", table.field(key));
        if !matches!(item.get_ref(), DeValue::Table(_)) {
            return Err(table.src.bad_value(
                &item.span(),
                path,
                format_args!("is {}, expected a table", with_article(item.get_ref())),
            ));
        }
        out.push(read(&TableReader::new(table.src, path, item))?);
    }
    Ok(Some(out))
}

fn read_entry(
    entry: &TableReader<'_, '_, '_>,
    role: Role,
    extra_keys: &[&str],
) -> Result<PluginSpec> {
    let mut allowed = PLUGIN_KEYS.to_vec();
    allowed.extend_from_slice(extra_keys);
    entry.check_keys(&allowed, None)?;
    let plugin = entry.string("plugin")?.ok_or_else(|| {
        entry.src.invalid(
            &entry.span,
            entry.field("plugin"),
            format!(
                "missing; every plugin entry needs plugin = \"PATH.wasm\" or \"builtin:NAME\" \
                 (built-ins: {})",
                builtin::names()
            ),
        )
    })?;
    let source = match plugin.value.strip_prefix(BUILTIN_PREFIX) {
        Some(name) if builtin::get(name).is_some() => PluginSource::Builtin(name.to_owned()),
        Some(_) => {
            return Err(entry.src.bad_value(
                &plugin.span,
                &plugin.field,
                format_args!("is not a built-in plugin (built-ins: {})", builtin::names()),
            ));
        }
        None if plugin.value.trim().is_empty() => {
            return Err(entry
                .src
                .invalid(&plugin.span, &plugin.field, "must not be empty"));
        }
        // Relative to the policy file; `policy::load` resolves it.
        None => PluginSource::File(PathBuf::from(&plugin.value)),
    };
    let mut spec = PluginSpec::new(source, role);
    if let Some(config) = entry.get("config") {
        if !matches!(config.get_ref(), DeValue::Table(_)) {
            return Err(entry.type_error("config", config, "a table"));
        }
        spec.config = to_json(config).to_string();
    }
    if let Some(mb) = entry.integer("memory_mb")? {
        if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&mb.value) {
            return Err(entry.src.bad_value(
                &mb.span,
                &mb.field,
                format_args!("must be {MIN_MEMORY_MB}..={MAX_MEMORY_MB} (MiB)"),
            ));
        }
        spec.limits.memory = u64::try_from(mb.value).unwrap_or(0) << 20;
    }
    if let Some(cpu) = entry.duration("cpu", false)? {
        spec.limits.cpu = cpu.value;
    }
    if let Some(timeout) = entry.duration("timeout", false)? {
        spec.limits.timeout = timeout.value;
    }
    if spec.limits.timeout > Duration::from_secs(300) {
        return Err(entry.src.invalid(
            &entry.span,
            entry.field("timeout"),
            "must be at most 5m: the runtime waits for a plugin's answer",
        ));
    }
    if let Some(grants) = entry.get("grants") {
        spec.grants = read_grants(entry, grants)?;
    }
    if let Some(pin) = entry.string("sha256")? {
        spec.sha256 = Some(Sha256Pin::parse(&pin.value).ok_or_else(|| {
            entry.src.bad_value(
                &pin.span,
                &pin.field,
                "is not a sha256: 64 lowercase hexadecimal digits, as `ssm-tether plugin pin \
                 FILE` prints them",
            )
        })?);
    }
    Ok(spec)
}

fn read_grants(entry: &TableReader<'_, '_, '_>, value: &Spanned<DeValue<'_>>) -> Result<Grants> {
    let expected = "an array of grant names, e.g. [\"tunnel-tcp\"]";
    let DeValue::Array(items) = value.get_ref() else {
        return Err(entry.type_error("grants", value, expected));
    };
    let mut grants = Grants::default();
    for item in items {
        let DeValue::String(name) = item.get_ref() else {
            return Err(entry.type_error("grants", item, expected));
        };
        if !grants.add(name) {
            return Err(entry.src.bad_value(
                &item.span(),
                entry.field("grants"),
                format_args!("is not a grant (known: {})", Grants::NAMES.join(", ")),
            ));
        }
    }
    Ok(grants)
}

/// A TOML value as JSON, for `init`. Datetimes become their TOML text.
fn to_json(value: &Spanned<DeValue<'_>>) -> serde_json::Value {
    use serde_json::Value;
    match value.get_ref() {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_or_else(|_| Value::String(i.as_str().to_owned()), Value::from),
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(f.as_str().to_owned()), Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        DeValue::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v)))
                .collect(),
        ),
    }
}
