//! `ssm-tether ssh-proxy TARGET [PORT]`: the native `ProxyCommand` for OpenSSH.
//!
//! It does what `aws ssm start-session --document-name AWS-StartSSHSession` does (StartSession,
//! then the session over stdin/stdout), without a Python interpreter starting in between,
//! and with the same recovery: resumed across every recycle, so `ssh` never notices.
//!
//! ```text
//! Host i-* mi-*
//!     ProxyCommand ssm-tether ssh-proxy %h %p
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use ssm_tether::aws::{AwsSettings, SsmApi};
use ssm_tether::tunnel::{SessionApi, StartRequest};

use super::args::printable;
use crate::cli::EXIT_FAILURE;

/// The session document of SSH over SSM: a Port session without a local port.
const SSH_DOCUMENT: &str = "AWS-StartSSHSession";

/// Arguments of `ssh-proxy`.
#[derive(Debug, clap::Args)]
pub(crate) struct SshProxyArgs {
    /// The managed node: an instance id (`i-…`) or a hybrid node id (`mi-…`); `%h` in
    /// `~/.ssh/config`.
    target: String,
    /// The port the agent connects to on the node (`%p`).
    #[arg(default_value_t = 22)]
    port: u16,
    /// The AWS profile (default: the SDK's chain, `AWS_PROFILE`).
    #[arg(long)]
    profile: Option<String>,
    /// The AWS region (default: the profile's or `AWS_REGION`).
    #[arg(long)]
    region: Option<String>,
    /// The SSM endpoint, e.g. a VPC endpoint or the emulator's.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// The reason recorded with the session (StartSession `Reason`).
    #[arg(long)]
    reason: Option<String>,
    /// The session document (a custom Port document without `localPortNumber`).
    #[arg(long, default_value = SSH_DOCUMENT)]
    document_name: String,
    /// Allow a plain `http://` endpoint on another host (the session token then crosses the
    /// network unencrypted); loopback endpoints need no permission.
    #[arg(long)]
    allow_insecure_endpoint: bool,
}

/// Starts the session and runs it over stdin/stdout; a failed StartSession is one line and
/// exit 1, so that `ssh` reports it at once instead of waiting.
pub(crate) fn run(args: SshProxyArgs) -> anyhow::Result<ExitCode> {
    // ssh shows this process's stderr on every connection: only what fails for good.
    crate::cli::init_logging_with("error");
    if let Some(url) = &args.endpoint_url
        && !args.allow_insecure_endpoint
        && ssm_tether::aws::is_cleartext_to_another_host(url)
    {
        eprintln!(
            "ssm-tether ssh-proxy: --endpoint-url {}: plain http to another host would send the \
             session token unencrypted; use https, a loopback address, or \
             --allow-insecure-endpoint",
            printable(url)
        );
        return Ok(ExitCode::from(crate::cli::EXIT_USAGE));
    }
    let settings = AwsSettings {
        region: args.region.clone(),
        profile: args.profile.clone(),
        endpoint_url: args.endpoint_url.clone(),
        ..AwsSettings::default()
    };
    let api = SsmApi::new(settings);
    let request = StartRequest {
        target: args.target.clone(),
        document_name: args.document_name.clone(),
        parameters: BTreeMap::from([("portNumber".to_owned(), vec![args.port.to_string()])]),
        reason: args.reason.clone(),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let grant = match SessionApi::start_session(&api, &request).await {
            Ok(grant) => grant,
            Err(err) => {
                eprintln!(
                    "ssm-tether ssh-proxy: cannot start a session to {}: {err}",
                    printable(&args.target)
                );
                return Ok(ExitCode::from(EXIT_FAILURE));
            }
        };
        super::session::run(grant, request, super::session::LocalEnd::Stream, api).await
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}
