//! What to do about a failure: the one-line remedy shown next to an AWS API error or a failed
//! data-channel connection, in `run`'s log and in `check --online`. Every remedy text lives
//! here; `aws::ApiError::remedy` and `transport::connect::ConnectError` pick one by error
//! kind, service error code and message.
//!
//! A leaf module: it names no type of the layers that use it, so that both the transport and
//! the API client can.

use std::fmt;

/// A recognised kind of failure, with what its remedy needs to name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// The target has no connected SSM agent (`TargetNotConnected`).
    TargetNotConnected,
    /// The caller may not perform an action (`AccessDeniedException`).
    AccessDenied {
        /// The IAM action, e.g. `ssm:StartSession`.
        action: String,
        /// The kind of principal the message names ("IAM user", "assumed role" …), if any.
        principal: Option<&'static str>,
        /// Whether the message says an explicit deny matched.
        explicit_deny: bool,
    },
    /// The access key id is unknown to AWS (`UnrecognizedClientException`,
    /// `InvalidClientTokenId`).
    UnknownAccessKey,
    /// The signature was refused (`InvalidSignatureException`, `SignatureDoesNotMatch`).
    BadSignature,
    /// The credentials have expired (`ExpiredTokenException`).
    ExpiredToken {
        /// The profile in use.
        profile: String,
    },
    /// The cached SSO token of the profile has expired or is missing.
    SsoLogin {
        /// The profile in use.
        profile: String,
    },
    /// No credential source yielded credentials.
    NoCredentials {
        /// The profile in use.
        profile: String,
    },
    /// The service throttled the call.
    Throttling,
    /// The document does not exist in the region or rejects the parameters.
    InvalidDocument,
    /// The service failed (HTTP 5xx).
    ServerError,
    /// A host name could not be resolved.
    Dns,
    /// A TLS handshake failed (untrusted certificate, protocol error).
    Tls,
    /// No TCP connection could be opened (refused, unreachable, timed out).
    Unreachable,
    /// The proxy could not be reached or refused the tunnel.
    Proxy,
    /// The proxy wants credentials and got none.
    ProxyAuthRequired,
    /// The proxy refused the credentials it was given.
    ProxyAuthRejected,
}

impl fmt::Display for Remedy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TargetNotConnected => f.write_str(
                "the target's SSM agent is not online: check that the instance runs, that `aws \
                 ssm describe-instance-information` lists it as Online, that its instance \
                 profile allows Session Manager (AmazonSSMManagedInstanceCore) and that it \
                 reaches the ssm and ssmmessages endpoints",
            ),
            Self::AccessDenied {
                action,
                principal,
                explicit_deny,
            } => {
                let who = principal
                    .map_or_else(|| "the caller".to_owned(), |kind| format!("this {kind}"));
                if *explicit_deny {
                    write!(
                        f,
                        "an explicit deny (identity or session policy, permissions boundary or \
                         service control policy) blocks {action} for {who}: narrow that deny"
                    )
                } else {
                    write!(
                        f,
                        "allow {action} for {who} in IAM (StartSession needs it on the \
                         instance and on the document)"
                    )
                }
            }
            Self::UnknownAccessKey => f.write_str(
                "AWS does not know this access key id (deleted, another partition, or a typo): \
                 refresh the profile's credentials",
            ),
            Self::BadSignature => f.write_str(
                "the secret access key does not match the access key id, or this machine's \
                 clock is wrong (check NTP)",
            ),
            Self::ExpiredToken { profile } => write!(
                f,
                "the credentials have expired: refresh them (`aws sso login --profile \
                 {profile}` for an SSO profile, or whatever writes them); they are loaded \
                 afresh for every call, no restart needed"
            ),
            Self::SsoLogin { profile } => write!(
                f,
                "run `aws sso login --profile {profile}`: running tunnels pick the new token \
                 up by themselves"
            ),
            Self::NoCredentials { profile } => write!(
                f,
                "configure credentials for profile {profile} (`aws configure --profile \
                 {profile}` or `aws configure sso --profile {profile}`), or set \
                 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ),
            Self::Throttling => f.write_str(
                "the account's SSM request rate is exceeded in this region: ssm-tether backs \
                 off by itself; if it persists, run fewer sessions per account or ask AWS for \
                 a higher quota",
            ),
            Self::InvalidDocument => f.write_str(
                "the session document does not exist in this region or rejects its \
                 parameters: check the region, the document name and remote_host/remote_port",
            ),
            Self::ServerError => f.write_str(
                "the SSM service failed: ssm-tether retries by itself; see the AWS Health \
                 Dashboard if it persists",
            ),
            Self::Dns => f.write_str(
                "check the region and endpoint_url, this machine's DNS, and whether this network \
                 needs a proxy (HTTPS_PROXY or `proxy`) or a VPC endpoint \
                 (ssmmessages_endpoint)",
            ),
            Self::Tls => f.write_str(
                "the server's certificate is not trusted: a TLS-inspecting proxy needs its CA \
                 certificate in the operating system's trust store; also check the clock",
            ),
            Self::Unreachable => f.write_str(
                "check the network path (firewall, security group, VPN), or set HTTPS_PROXY or \
                 `proxy` if this network only goes out through a proxy",
            ),
            Self::Proxy => f.write_str(
                "check the proxy's address (HTTPS_PROXY, HTTP_PROXY or `proxy`) and that it \
                 allows CONNECT to the endpoint's port, or exempt the host with NO_PROXY",
            ),
            Self::ProxyAuthRequired => f.write_str(
                "the proxy wants credentials: give them in the proxy URL, \
                 http://USER:PASSWORD@host:port (percent-encoded)",
            ),
            Self::ProxyAuthRejected => f.write_str(
                "the proxy refused the credentials of the proxy URL: check user and password \
                 (percent-encoded)",
            ),
        }
    }
}

/// The remedy for a failed TCP, TLS or proxy step, guessed from an error's text (the HTTP
/// stack reports these as text only). `None` when nothing is recognised.
pub fn for_network_text(text: &str) -> Option<Remedy> {
    let lower = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&[
        "407",
        "proxy authorization required",
        "proxy authentication",
    ]) {
        return Some(Remedy::ProxyAuthRequired);
    }
    if has(&["proxy", "tunnel error"]) {
        return Some(Remedy::Proxy);
    }
    if has(&[
        "dns error",
        "failed to lookup address",
        "name or service not known",
        "no such host",
        "nodename nor servname",
        "temporary failure in name resolution",
        "cannot resolve",
    ]) {
        return Some(Remedy::Dns);
    }
    if has(&[
        "certificate",
        "unknownissuer",
        "tls handshake",
        "invalid peer",
        "tls error",
    ]) {
        return Some(Remedy::Tls);
    }
    if has(&[
        "connection refused",
        "network is unreachable",
        "no route to host",
        "host is unreachable",
        "timed out",
        "timeout",
        "cannot connect",
    ]) {
        return Some(Remedy::Unreachable);
    }
    None
}

/// What an `AccessDenied` message says: the IAM action (`ssm:StartSession`), the kind of
/// principal and whether an explicit deny matched. `operation` stands in for the action when
/// the message names none.
pub fn access_denied(message: &str, operation: &str) -> Remedy {
    let action = message
        .split("perform: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|a| a.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|a| a.contains(':') && a.len() <= 128)
        .map_or_else(|| format!("ssm:{operation}"), str::to_owned);
    let principal = if message.contains(":assumed-role/") {
        Some("assumed role")
    } else if message.contains(":federated-user/") {
        Some("federated user")
    } else if message.contains(":user/") {
        Some("IAM user")
    } else if message.contains(":role/") {
        Some("IAM role")
    } else if message.contains(":root ") || message.ends_with(":root") {
        Some("root user")
    } else {
        None
    };
    Remedy::AccessDenied {
        action,
        principal,
        explicit_deny: message.to_ascii_lowercase().contains("explicit deny"),
    }
}

/// The profile to name in a remedy: the configured one, else `AWS_PROFILE`, else `default`.
pub fn profile_name(configured: Option<&str>) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| "default".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_action_and_the_principal_kind() {
        let message = "User: arn:aws:sts::123456789012:assumed-role/Dev/alice is not authorized \
                       to perform: ssm:StartSession on resource: arn:aws:ec2:us-east-1:\
                       123456789012:instance/i-0abc because no identity-based policy allows \
                       the ssm:StartSession action";
        let remedy = access_denied(message, "StartSession");
        assert_eq!(
            remedy,
            Remedy::AccessDenied {
                action: "ssm:StartSession".into(),
                principal: Some("assumed role"),
                explicit_deny: false,
            }
        );
        let text = remedy.to_string();
        assert!(
            text.contains("allow ssm:StartSession for this assumed role"),
            "{text}"
        );

        let denied = access_denied(
            "User: arn:aws:iam::1:user/bob is not authorized to perform: \
             ssm:DescribeInstanceInformation with an explicit deny in a service control policy",
            "DescribeInstanceInformation",
        );
        let text = denied.to_string();
        assert!(text.contains("explicit deny"), "{text}");
        assert!(text.contains("this IAM user"), "{text}");
        assert!(text.contains("ssm:DescribeInstanceInformation"), "{text}");

        let bare = access_denied("Access denied", "ResumeSession");
        assert_eq!(
            bare,
            Remedy::AccessDenied {
                action: "ssm:ResumeSession".into(),
                principal: None,
                explicit_deny: false,
            }
        );
    }

    #[test]
    fn network_texts_are_recognised() {
        let cases = [
            (
                "dispatch failure: io error: client error (Connect): dns error: failed to \
                 lookup address information: Name or service not known",
                Some(Remedy::Dns),
            ),
            ("invalid peer certificate: UnknownIssuer", Some(Remedy::Tls)),
            (
                "tcp connect error: Connection refused (os error 111)",
                Some(Remedy::Unreachable),
            ),
            (
                "tunnel error: proxy authorization required",
                Some(Remedy::ProxyAuthRequired),
            ),
            ("tunnel error: unsuccessful", Some(Remedy::Proxy)),
            ("something else", None),
        ];
        for (text, expected) in cases {
            assert_eq!(for_network_text(text), expected, "{text}");
        }
    }

    #[test]
    fn sso_and_expiry_remedies_name_the_profile() {
        let sso = Remedy::SsoLogin {
            profile: "prod".into(),
        };
        assert!(sso.to_string().contains("aws sso login --profile prod"));
        let expired = Remedy::ExpiredToken {
            profile: "dev".into(),
        };
        assert!(expired.to_string().contains("aws sso login --profile dev"));
    }
}
