//! `ssm-tether check POLICY.toml`: validate a policy file without connecting anywhere.

use std::path::Path;
use std::process::ExitCode;

use ssm_tether::policy;

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
        println!(
            "ok  {name}: {local} -> {destination} ({document}, region {region})",
            name = tunnel.name,
            local = tunnel.local,
            document = tunnel.document_name(),
        );
    }
    println!(
        "{}: {} tunnel(s), valid",
        path.display(),
        policy.tunnels.len()
    );
    Ok(ExitCode::SUCCESS)
}
