//! `ssm-tether check POLICY.toml`: validate a policy file without connecting anywhere;
//! `--online` then proves, per tunnel, that its credentials, target and document work, with
//! read-only calls (DescribeInstanceInformation, GetDocument), each failure one line with its
//! remedy.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ssm_tether::plugin::PluginEngine;
use ssm_tether::plugin::text::escape;
use ssm_tether::policy;
use ssm_tether::policy::Role;
use ssm_tether::reload::Reloader;

use ssm_tether::aws::{ApiError, ApiErrorKind, SsmApi, TagSelector};
use ssm_tether::policy::TunnelSpec;
use ssm_tether::remedy::Remedy;

use super::{EXIT_FAILURE, EXIT_USAGE};

/// Limit of one online check call, credential loading included.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// Loads and validates the file; prints one line per tunnel, or the error naming file, line,
/// field and value. With `online`, then checks every tunnel against AWS (exit 1 on a failure).
pub(crate) fn run(path: &Path, online: bool) -> anyhow::Result<ExitCode> {
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
            let pinned = spec
                .sha256
                .map_or_else(String::new, |pin| format!(" (sha256 {pin}, as pinned)"));
            println!("ok  {}: {role} {}{pinned}", tunnel.name, spec.source);
            if role == Role::HealthCheck && !spec.grants.tunnel_tcp {
                println!(
                    "    warning: this health check has no grants = [\"tunnel-tcp\"]; it cannot \
                     open connections through the tunnel"
                );
            }
        }
    }
    warn_about_readable_proxy_passwords(path, &policy.tunnels);
    println!(
        "{}: {} tunnel(s), valid",
        path.display(),
        policy.tunnels.len()
    );
    if !online {
        return Ok(ExitCode::SUCCESS);
    }
    let failures = runtime.block_on(async {
        let mut failures = 0;
        for tunnel in &policy.tunnels {
            failures += check_online(tunnel).await;
        }
        failures
    });
    if failures == 0 {
        println!("online: every tunnel's credentials, target and document work");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("online: {failures} problem(s)");
        Ok(ExitCode::from(EXIT_FAILURE))
    }
}

/// A proxy password in a policy file that others may read is a leaked password.
fn warn_about_readable_proxy_passwords(path: &Path, tunnels: &[TunnelSpec]) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let with_password = tunnels
            .iter()
            .any(|t| t.aws.proxy.as_ref().is_some_and(|p| p.has_credentials()));
        let readable = std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o044 != 0);
        if with_password && readable {
            println!(
                "    warning: {} holds proxy credentials and others may read it: chmod 600 it, \
                 or give the proxy in HTTPS_PROXY instead",
                path.display()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, tunnels);
}

/// One result line of `--online`: `ok`, `warn` or `FAIL`, the tunnel, what, and the detail.
fn report(level: &str, tunnel: &str, what: &str, detail: impl std::fmt::Display) {
    // API messages are the service's text: one line, no control characters.
    let detail = escape(&detail.to_string());
    println!("{level:<4}  {tunnel}: {what}: {detail}");
}

/// `call`, bounded by [`CALL_LIMIT`].
async fn bounded<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(CALL_LIMIT, call)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError {
                operation,
                kind: ApiErrorKind::Transport,
                code: None,
                message: format!(
                    "no answer within {} — remedy: {}",
                    humantime::format_duration(CALL_LIMIT),
                    Remedy::Unreachable
                ),
            })
        })
}

/// Checks one tunnel against AWS; returns the number of failures.
async fn check_online(tunnel: &TunnelSpec) -> usize {
    let api = SsmApi::new(tunnel.aws.clone());
    let name = tunnel.name.as_str();
    report("info", name, "network", network_line(tunnel, &api));
    // Credentials and region: loaded exactly as `run` loads them for every call.
    match bounded("LoadCredentials", api.signing_material()).await {
        Ok(material) => report(
            "ok",
            name,
            "credentials",
            format!(
                "loaded for profile {} (region {})",
                api.profile_name(),
                material.region,
            ),
        ),
        Err(err) => {
            // Nothing else can work without them.
            report("FAIL", name, "credentials", err);
            return 1;
        }
    }
    let mut failures = 0;
    // The target: the tag lookup `run` makes, or the node's registration.
    match TagSelector::parse(&tunnel.target) {
        Ok(Some(selector)) => {
            match bounded("DescribeInstanceInformation", api.resolve_tag(&selector)).await {
                Ok(resolved) => report(
                    "ok",
                    name,
                    "target",
                    format!(
                        "{selector} is {} ({} online node(s) match; the lowest id is used, again \
                     at every restart)",
                        resolved.instance_id, resolved.matched
                    ),
                ),
                Err(err) => {
                    report("FAIL", name, "target", err);
                    failures += 1;
                }
            }
        }
        Ok(None) if is_instance(&tunnel.target) => {
            match bounded(
                "DescribeInstanceInformation",
                api.describe_instance(&tunnel.target),
            )
            .await
            {
                Ok(Some(node)) if node.ping_status == "Online" => report(
                    "ok",
                    name,
                    "target",
                    format!(
                        "{} is online (agent {})",
                        node.instance_id,
                        node.agent_version
                            .as_deref()
                            .unwrap_or("of unknown version")
                    ),
                ),
                Ok(Some(node)) => {
                    report(
                        "FAIL",
                        name,
                        "target",
                        format!(
                            "{} is {} — remedy: {}",
                            node.instance_id,
                            node.ping_status,
                            Remedy::TargetNotConnected
                        ),
                    );
                    failures += 1;
                }
                Ok(None) => {
                    report(
                        "FAIL",
                        name,
                        "target",
                        format!(
                            "{} is not a managed node in this account and region — remedy: {}",
                            tunnel.target,
                            Remedy::TargetNotConnected
                        ),
                    );
                    failures += 1;
                }
                // StartSession does not need this permission: a caller without it may still
                // start sessions.
                Err(err) if is_denied(&err) => {
                    report("warn", name, "target", format!("not checked: {err}"));
                }
                Err(err) => {
                    report("FAIL", name, "target", err);
                    failures += 1;
                }
            }
        }
        Ok(None) => report(
            "info",
            name,
            "target",
            format!(
                "{} not checked (only instances are listed by SSM)",
                tunnel.target
            ),
        ),
        Err(err) => {
            report("FAIL", name, "target", format!("{} {err}", tunnel.target));
            failures += 1;
        }
    }
    // The document: exists in the region and is a session document.
    let document = tunnel.document_name();
    match bounded("GetDocument", api.get_document(document)).await {
        Ok(info) => report(
            "ok",
            name,
            "document",
            format!(
                "{} ({}, {})",
                info.name,
                info.document_type.as_deref().unwrap_or("type unknown"),
                info.status.as_deref().unwrap_or("status unknown")
            ),
        ),
        Err(err) if is_denied(&err) => {
            report("warn", name, "document", format!("not checked: {err}"));
        }
        Err(err) => {
            report("FAIL", name, "document", err);
            failures += 1;
        }
    }
    failures
}

/// A permission the caller lacks (not a credential that AWS refuses): a read-only check it
/// cannot make says nothing about StartSession.
fn is_denied(err: &ApiError) -> bool {
    err.kind == ApiErrorKind::AccessDenied
        && err
            .code
            .as_deref()
            .is_some_and(|code| matches!(code, "AccessDeniedException" | "AccessDenied"))
}

/// `i-…` or `mi-…`: what DescribeInstanceInformation lists.
fn is_instance(target: &str) -> bool {
    target.starts_with("i-") || target.starts_with("mi-")
}

/// How the tunnel reaches AWS: proxies, data-channel endpoint, FIPS and dual-stack.
fn network_line(tunnel: &TunnelSpec, api: &SsmApi) -> String {
    let mut line = format!("proxy {}", api.proxies().describe());
    if let Some(endpoint) = &tunnel.aws.ssmmessages_endpoint {
        line.push_str(&format!("; data channel via {endpoint}"));
    }
    if tunnel.aws.use_fips == Some(true) {
        line.push_str("; FIPS endpoints");
    }
    if tunnel.aws.use_dual_stack == Some(true) {
        line.push_str("; dual-stack endpoints");
    }
    line
}
