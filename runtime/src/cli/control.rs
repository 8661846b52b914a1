//! `ssm-tether status` and `ssm-tether reload`: clients of a running `run`'s control endpoint
//! (`ssm_tether::ops::control`): its Unix socket, or its named pipe on Windows.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ssm_tether::ops::control::{self, ControlError, Request};
use ssm_tether::ops::{StatusReport, TunnelReport};
use ssm_tether::plugin::text::escape;

use super::EXIT_FAILURE;

/// Time `status` waits for its answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find the running `run`.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The policy file the running `ssm-tether run` was given (finds its control socket);
    /// without it, the only control socket under $XDG_RUNTIME_DIR/ssm-tether/ (Windows: the
    /// only \\.\pipe\ssm-tether-* pipe).
    policy: Option<PathBuf>,
    /// The control socket (Windows: pipe), as given to `run --control`.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// `ssm-tether status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Print the full report as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Target {
    /// The control endpoint: `--control`, else the policy file's (the first candidate that
    /// exists), else the only one there is.
    fn path(&self) -> Result<PathBuf, ControlError> {
        if let Some(path) = &self.control {
            return Ok(path.clone());
        }
        match &self.policy {
            Some(policy) => Ok(control::locate(policy)),
            None => control::find_only(),
        }
    }
}

/// Asks the running `run` for its status; prints a table or JSON. Exit 0 when answered, 1
/// when no `run` could be asked.
pub(crate) fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let response = match ask(&args.target, Request::Status, STATUS_TIMEOUT)? {
        Ok(response) => response,
        Err(code) => return Ok(code),
    };
    let Some(report) = response.status else {
        eprintln!(
            "ssm-tether: {}",
            escape(
                response
                    .error
                    .as_deref()
                    .unwrap_or("no status in the answer")
            )
        );
        return Ok(ExitCode::from(EXIT_FAILURE));
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the running `run` to reload its plugins, as SIGHUP does; prints the outcome. Exit 0
/// when reloaded, 1 when the reload failed (the running plugins stay) or no `run` could be
/// asked.
pub(crate) fn reload(target: &Target) -> anyhow::Result<ExitCode> {
    // Loading plugins may compile them: wait as long as the server does.
    let timeout = control::RELOAD_TIMEOUT + Duration::from_secs(5);
    let response = match ask(target, Request::Reload, timeout)? {
        Ok(response) => response,
        Err(code) => return Ok(code),
    };
    match response.reload {
        Some(report) => {
            let line = escape(&report.message);
            if report.reloaded {
                println!("ssm-tether: {line}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("ssm-tether: {line}");
                Ok(ExitCode::from(EXIT_FAILURE))
            }
        }
        None => {
            eprintln!(
                "ssm-tether: {}",
                escape(
                    response
                        .error
                        .as_deref()
                        .unwrap_or("no outcome in the answer")
                )
            );
            Ok(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// One exchange; a failure to reach `run` is printed and becomes exit 1.
fn ask(
    target: &Target,
    request: Request,
    timeout: Duration,
) -> anyhow::Result<Result<control::Response, ExitCode>> {
    let path = match target.path() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            return Ok(Err(ExitCode::from(EXIT_FAILURE)));
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match runtime.block_on(control::exchange(&path, request, timeout)) {
        Ok(response) => Ok(Ok(response)),
        Err(err) => {
            eprintln!("ssm-tether: {err}");
            Ok(Err(ExitCode::from(EXIT_FAILURE)))
        }
    }
}

/// The report as a table, a line per tunnel, then a line per plugin.
fn table(report: &StatusReport) -> String {
    let forwarding = report
        .tunnels
        .iter()
        .filter(|t| t.state == "forwarding")
        .count();
    let mut out = format!(
        "ssm-tether {} (pid {}), {}, up {}; {}/{} tunnels forwarding{}\n\n",
        report.version,
        report.pid,
        escape(&report.policy),
        span(report.uptime_seconds),
        forwarding,
        report.tunnels.len(),
        report
            .metrics
            .as_deref()
            .map(|m| format!("; metrics {m}"))
            .unwrap_or_default(),
    );
    let mut rows = vec![
        [
            "TUNNEL",
            "STATE",
            "FOR",
            "SESSIONS",
            "RESUMES",
            "RESTARTS",
            "CONNS",
            "UP",
            "DOWN",
            "LAST OUTAGE",
            "PLUGINS",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    rows.extend(report.tunnels.iter().map(row));
    out.push_str(&columns(&rows));
    let mut plugins = Vec::new();
    for tunnel in &report.tunnels {
        for plugin in &tunnel.plugins {
            let mut health = plugin.health.clone();
            if plugin.failures > 0 {
                health.push_str(&format!(", {} failure(s)", plugin.failures));
            }
            if let Some(probe) = &plugin.last_probe {
                health.push_str(&format!(", last probe: {}", escape(&clip(probe, 80))));
            }
            if let Some(failure) = &plugin.last_failure {
                health.push_str(&format!(", last failure: {}", escape(&clip(failure, 80))));
            }
            plugins.push(vec![
                tunnel.name.clone(),
                plugin.role.clone(),
                escape(&plugin.plugin),
                health,
            ]);
        }
    }
    if !plugins.is_empty() {
        out.push_str("\nplugins:\n");
        for line in columns(&plugins).lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn row(tunnel: &TunnelReport) -> Vec<String> {
    let primaries = tunnel
        .sessions
        .iter()
        .filter(|s| s.role != "draining")
        .count();
    let outage = tunnel.last_outage.as_ref().map_or_else(
        || "none".to_owned(),
        |o| {
            format!(
                "{:.2}s, {} ago: {}{}",
                o.seconds,
                span(o.ago_seconds),
                escape(&clip(&o.cause, 48)),
                if o.restarted { " (restarted)" } else { "" }
            )
        },
    );
    let mut healths: Vec<(String, usize)> = Vec::new();
    for plugin in &tunnel.plugins {
        match healths.iter_mut().find(|(h, _)| *h == plugin.health) {
            Some((_, n)) => *n += 1,
            None => healths.push((plugin.health.clone(), 1)),
        }
    }
    let plugins = if healths.is_empty() {
        "none".to_owned()
    } else {
        healths
            .iter()
            .map(|(health, n)| format!("{n} {health}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        tunnel.name.clone(),
        tunnel.state.clone(),
        span(tunnel.for_seconds),
        format!("{}/{}", tunnel.sessions_forwarding, primaries),
        tunnel.resumes.to_string(),
        tunnel.restarts.to_string(),
        format!(
            "{} ({} total)",
            tunnel.connections, tunnel.connections_total
        ),
        bytes(tunnel.bytes_up),
        bytes(tunnel.bytes_down),
        outage,
        plugins,
    ]
}

/// Rows padded into columns two spaces apart, without trailing spaces.
fn columns(rows: &[Vec<String>]) -> String {
    let count = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..count)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whole seconds, humanly: `3h 2m 5s`; under a second: `0s`.
fn span(seconds: f64) -> String {
    let whole = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    humantime::format_duration(Duration::from_secs(whole)).to_string()
}

/// `1.2 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_as_a_person_writes_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 << 30), "5.0 GiB");
        assert_eq!(span(3725.9), "1h 2m 5s");
        assert_eq!(span(0.4), "0s");
        assert_eq!(clip("abcdef", 3), "abc…");
    }

    #[test]
    fn columns_line_up_without_trailing_spaces() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned()],
            vec!["CCC".to_owned(), "D".to_owned()],
        ];
        assert_eq!(columns(&rows), "A    BB\nCCC  D\n");
    }
}
