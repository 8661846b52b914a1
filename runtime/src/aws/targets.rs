//! Targets named by tag (`target = "tag:Name=bastion"`), and the read-only lookups
//! `check --online` makes (DescribeInstanceInformation, GetDocument).
//!
//! A tag target is resolved through DescribeInstanceInformation with the filters
//! `tag:KEY = [VALUE]` and `PingStatus = [Online]`, so only managed nodes whose agent is
//! online count. Of several matches the lowest instance id is taken, so that every resolution
//! of the same fleet picks the same node. [`SsmApi::start_session`] resolves the selector
//! again for every StartSession (first start, restarts, successors), never for a resume: a
//! bastion replaced by its Auto Scaling group is found again at the next restart.

use std::fmt;

use aws_sdk_ssm::types::{InstanceInformation, InstanceInformationStringFilter};

use super::{ApiError, ApiErrorKind, SsmApi};

/// How a tag target is written: `tag:KEY=VALUE`.
pub const TAG_PREFIX: &str = "tag:";

/// Longest tag key AWS allows.
const MAX_TAG_KEY: usize = 128;
/// Longest tag value AWS allows.
const MAX_TAG_VALUE: usize = 256;
/// Results per DescribeInstanceInformation page (the API's maximum).
const PAGE_SIZE: i32 = 50;
/// Pages read at most: 1000 matching nodes are plenty to pick the lowest id from.
const MAX_PAGES: usize = 20;

/// A target given as `tag:KEY=VALUE`: the online managed node with that tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    /// The tag key (everything between `tag:` and the first `=`).
    pub key: String,
    /// The tag value (everything after the first `=`).
    pub value: String,
}

/// Why a `tag:` target is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    /// No `=` between key and value.
    #[error("is not tag:KEY=VALUE (no '=')")]
    NoValue,
    /// The key is empty or longer than AWS allows.
    #[error("has a tag key that is empty or longer than {MAX_TAG_KEY} characters")]
    Key,
    /// The value is empty or longer than AWS allows.
    #[error("has a tag value that is empty or longer than {MAX_TAG_VALUE} characters")]
    Value,
    /// Control characters.
    #[error("must not contain control characters")]
    Control,
}

impl TagSelector {
    /// `Ok(Some(_))` for `tag:KEY=VALUE`, `Ok(None)` for any other target (an instance id,
    /// `ecs:…`), which is used as it is.
    ///
    /// # Errors
    /// [`TagError`] for a `tag:` target that is malformed.
    pub fn parse(target: &str) -> Result<Option<Self>, TagError> {
        let Some(rest) = target.strip_prefix(TAG_PREFIX) else {
            return Ok(None);
        };
        if rest.chars().any(char::is_control) {
            return Err(TagError::Control);
        }
        let (key, value) = rest.split_once('=').ok_or(TagError::NoValue)?;
        if key.trim().is_empty() || key.chars().count() > MAX_TAG_KEY {
            return Err(TagError::Key);
        }
        if value.is_empty() || value.chars().count() > MAX_TAG_VALUE {
            return Err(TagError::Value);
        }
        Ok(Some(Self {
            key: key.to_owned(),
            value: value.to_owned(),
        }))
    }
}

impl fmt::Display for TagSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TAG_PREFIX}{}={}", self.key, self.value)
    }
}

/// The node a tag selector named at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The chosen instance id: the lowest of the matches.
    pub instance_id: String,
    /// How many online managed nodes matched.
    pub matched: usize,
}

/// A managed node as DescribeInstanceInformation reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNode {
    /// `i-…` or `mi-…`.
    pub instance_id: String,
    /// `Online`, `ConnectionLost`, `Inactive`.
    pub ping_status: String,
    /// The SSM agent's version, if reported.
    pub agent_version: Option<String>,
}

/// What GetDocument says about a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentInfo {
    /// The document's name.
    pub name: String,
    /// Its type (`Session` for a session document).
    pub document_type: Option<String>,
    /// Its status (`Active` …).
    pub status: Option<String>,
}

fn filter(key: &str, value: &str) -> Result<InstanceInformationStringFilter, ApiError> {
    InstanceInformationStringFilter::builder()
        .key(key)
        .values(value)
        .build()
        .map_err(|e| ApiError::new(OP_DESCRIBE, ApiErrorKind::Other, e.to_string()))
}

const OP_DESCRIBE: &str = "DescribeInstanceInformation";

fn node(info: &InstanceInformation) -> Option<ManagedNode> {
    Some(ManagedNode {
        instance_id: info.instance_id().filter(|id| !id.is_empty())?.to_owned(),
        ping_status: info
            .ping_status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        agent_version: info.agent_version().map(str::to_owned),
    })
}

impl SsmApi {
    /// The online managed node `selector` names now: the lowest instance id of those with the
    /// tag whose agent is online. Logs which one and how many matched.
    ///
    /// # Errors
    /// [`ApiError`] of DescribeInstanceInformation (with its remedy), or
    /// [`ApiErrorKind::TargetNotConnected`] when no online node has the tag.
    pub async fn resolve_tag(&self, selector: &TagSelector) -> Result<Resolved, ApiError> {
        let client = self.client().await?;
        let tag = filter(&format!("tag:{}", selector.key), &selector.value)?;
        let online = filter("PingStatus", "Online")?;
        let mut ids: Vec<String> = Vec::new();
        let mut next_token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page = client
                .describe_instance_information()
                .filters(tag.clone())
                .filters(online.clone())
                .max_results(PAGE_SIZE)
                .set_next_token(next_token.take())
                .send()
                .await
                .map_err(|e| self.explain(ApiError::from_sdk(OP_DESCRIBE, e)))?;
            ids.extend(
                page.instance_information_list()
                    .iter()
                    .filter_map(node)
                    .filter(|n| n.ping_status == "Online")
                    .map(|n| n.instance_id),
            );
            next_token = page
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            if next_token.is_none() {
                break;
            }
        }
        ids.sort();
        ids.dedup();
        let matched = ids.len();
        let Some(instance_id) = ids.into_iter().next() else {
            return Err(self.explain(ApiError::new(
                OP_DESCRIBE,
                ApiErrorKind::TargetNotConnected,
                format!(
                    "no online managed node has the tag {}={}",
                    selector.key, selector.value
                ),
            )));
        };
        if matched > 1 {
            tracing::info!(target: "ssm_tether::aws", %selector, %instance_id, matched,
                "target resolved: several online nodes match; using the lowest instance id");
        } else {
            tracing::info!(target: "ssm_tether::aws", %selector, %instance_id, "target resolved");
        }
        Ok(Resolved {
            instance_id,
            matched,
        })
    }

    /// The managed node `instance_id` as DescribeInstanceInformation reports it (whatever its
    /// ping status), or `None` when SSM does not know it.
    ///
    /// # Errors
    /// [`ApiError`] of DescribeInstanceInformation, with its remedy.
    pub async fn describe_instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<ManagedNode>, ApiError> {
        let client = self.client().await?;
        let page = client
            .describe_instance_information()
            .filters(filter("InstanceIds", instance_id)?)
            .max_results(PAGE_SIZE)
            .send()
            .await
            .map_err(|e| self.explain(ApiError::from_sdk(OP_DESCRIBE, e)))?;
        Ok(page
            .instance_information_list()
            .iter()
            .filter_map(node)
            .find(|n| n.instance_id == instance_id))
    }

    /// GetDocument for `name`: proves the document exists in the region and is readable.
    ///
    /// # Errors
    /// [`ApiError`] of GetDocument (`InvalidDocument` when it does not exist), with its remedy.
    pub async fn get_document(&self, name: &str) -> Result<DocumentInfo, ApiError> {
        const OP: &str = "GetDocument";
        let client = self.client().await?;
        let output = client
            .get_document()
            .name(name)
            .send()
            .await
            .map_err(|e| self.explain(ApiError::from_sdk(OP, e)))?;
        Ok(DocumentInfo {
            name: output.name().unwrap_or(name).to_owned(),
            document_type: output.document_type().map(|t| t.as_str().to_owned()),
            status: output.status().map(|s| s.as_str().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_targets_parse() {
        assert_eq!(TagSelector::parse("i-0123456789abcdef0"), Ok(None));
        assert_eq!(
            TagSelector::parse("tag:Name=bastion"),
            Ok(Some(TagSelector {
                key: "Name".into(),
                value: "bastion".into()
            }))
        );
        let asg = TagSelector::parse("tag:aws:autoscaling:groupName=web=blue")
            .expect("valid")
            .expect("a tag");
        assert_eq!(asg.key, "aws:autoscaling:groupName");
        assert_eq!(asg.value, "web=blue");
        assert_eq!(asg.to_string(), "tag:aws:autoscaling:groupName=web=blue");
        assert_eq!(
            TagSelector::parse("tag:Name=My Bastion").map(|t| t.map(|t| t.value)),
            Ok(Some("My Bastion".into()))
        );
        assert_eq!(TagSelector::parse("tag:Name"), Err(TagError::NoValue));
        assert_eq!(TagSelector::parse("tag:=x"), Err(TagError::Key));
        assert_eq!(TagSelector::parse("tag:Name="), Err(TagError::Value));
        assert_eq!(TagSelector::parse("tag:N\u{7}=x"), Err(TagError::Control));
    }
}
