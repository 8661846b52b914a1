//! `ssm-tether check POLICY.toml`: validate a policy file without connecting anywhere.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::plugin::PluginEngine;
use ssm_tether::plugin::text::escape;
use ssm_tether::policy;
use ssm_tether::policy::Role;
use ssm_tether::reload::Reloader;

use super::EXIT_USAGE;

/// Loads and validates the file; prints one line per tunnel, or the error naming file, line,
/// field and value.
pub(crate) fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let policy = match policy::load(path) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    for tunnel in &policy.tunnels {
        let destination = match &tunnel.remote_host {
            Some(host) => format!("{host}:{} via {}", tunnel.remote_port, tunnel.target),
            None => format!("{}:{}", tunnel.target, tunnel.remote_port),
        };
        let region = tunnel
            .aws
            .region
            .as_deref()
            .unwrap_or("(from the AWS profile)");
        let sessions = match tunnel.sessions {
            1 => String::new(),
            k => format!(", {k} sessions"),
        };
        let rotation = tunnel.rotation.map_or_else(String::new, |r| {
            format!(
                ", rotated {} before its {} limit",
                humantime::format_duration(r.rotate_before),
                humantime::format_duration(r.max_session_duration)
            )
        });
        println!(
            "ok  {name}: {local} -> {destination} ({document}, region {region}{sessions}{rotation})",
            name = tunnel.name,
            local = tunnel.local,
            document = tunnel.document_name(),
        );
    }
    // Plugins are started (compiled, instantiated, `init` given its config) exactly as `run`
    // would, so a rejected config fails here with the plugin's own message.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let started = runtime.block_on(async {
        let engine = PluginEngine::new(PluginEngine::default_cache_dir())?;
        anyhow::Ok(Reloader::start(engine, path, &policy).await)
    })?;
    if let Err(err) = started {
        // The error may quote a plugin (its `init` message): escaped, one line.
        eprintln!("ssm-tether: {}", escape(&err.to_string()));
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    for tunnel in &policy.tunnels {
        for (role, spec) in tunnel.plugins.entries() {
            println!("ok  {}: {role} {}", tunnel.name, spec.source);
            if role == Role::HealthCheck && !spec.grants.tunnel_tcp {
                println!(
                    "    warning: this health check has no grants = [\"tunnel-tcp\"]; it cannot \
                     open connections through the tunnel"
                );
            }
        }
    }
    println!(
        "{}: {} tunnel(s), valid",
        path.display(),
        policy.tunnels.len()
    );
    Ok(ExitCode::SUCCESS)
}
