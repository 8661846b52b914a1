//! Fake managed nodes: what `DescribeInstanceInformation` reports and which targets
//! StartSession accepts, and the "replacement" of one at run time (an Auto Scaling group
//! replacing a bastion: a new id with the same tags, the old node offline).
//!
//! With no instances configured the emulator keeps its old behaviour: every well-formed
//! `i-…`/`mi-…` id is a connected target, and DescribeInstanceInformation asked about such ids
//! reports them online. With instances configured, only those whose ping status is `Online`
//! are connected targets.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// One fake managed node (the `instances` section of a scenario file, `--instance`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceSettings {
    /// `i-…` or `mi-…`.
    pub id: String,
    /// Its tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Whether its agent is connected.
    #[serde(default)]
    pub ping_status: PingStatus,
}

impl InstanceSettings {
    /// An online node with `tags`.
    pub fn online(id: impl Into<String>, tags: &[(&str, &str)]) -> Self {
        Self {
            id: id.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ping_status: PingStatus::Online,
        }
    }

    /// Parses `--instance ID[:KEY=VALUE[,KEY=VALUE…]]` (online).
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse_flag(text: &str) -> Result<Self, String> {
        let (id, tags) = text.split_once(':').unwrap_or((text, ""));
        if !is_instance_id(id) {
            return Err(format!("{id:?} is not an instance id (i-… or mi-…)"));
        }
        let mut parsed = BTreeMap::new();
        for pair in tags.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("tag {pair:?} is not KEY=VALUE"))?;
            if key.is_empty() {
                return Err(format!("tag {pair:?} has an empty key"));
            }
            parsed.insert(key.to_owned(), value.to_owned());
        }
        Ok(Self {
            id: id.to_owned(),
            tags: parsed,
            ping_status: PingStatus::Online,
        })
    }
}

/// A node's agent status, as SSM reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PingStatus {
    /// The agent is connected.
    #[default]
    Online,
    /// The agent stopped pinging (the instance stopped, or is gone).
    ConnectionLost,
    /// The node is deregistered.
    Inactive,
}

impl PingStatus {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "Online",
            Self::ConnectionLost => "ConnectionLost",
            Self::Inactive => "Inactive",
        }
    }
}

/// Whether `id` looks like an instance (`i-…`) or managed-instance (`mi-…`) id.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("i-")
        .or_else(|| id.strip_prefix("mi-"))
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// One `Filters` entry of DescribeInstanceInformation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    /// `tag:KEY`, `tag-key`, `PingStatus`, `InstanceIds`, `ResourceType`.
    pub key: String,
    /// Any of these matches.
    pub values: Vec<String>,
}

/// The filter keys the emulator understands.
pub const FILTER_KEYS: &[&str] = &[
    "tag:…",
    "tag-key",
    "PingStatus",
    "InstanceIds",
    "ResourceType",
];

/// The fake nodes, shared by the API and the admin endpoint. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Instances {
    /// `None`: none configured (every well-formed id is a connected target).
    nodes: Arc<Mutex<Option<Vec<InstanceSettings>>>>,
}

impl Instances {
    /// The registry for the configured nodes (`configured` empty: none configured).
    pub fn new(configured: &[InstanceSettings]) -> Self {
        let nodes = (!configured.is_empty()).then(|| {
            let mut nodes = configured.to_vec();
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
            nodes
        });
        Self {
            nodes: Arc::new(Mutex::new(nodes)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Vec<InstanceSettings>>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether nodes are configured (else every well-formed id is a connected target).
    pub fn is_configured(&self) -> bool {
        self.lock().is_some()
    }

    /// Every configured node, by id (empty when none are configured).
    pub fn all(&self) -> Vec<InstanceSettings> {
        self.lock().clone().unwrap_or_default()
    }

    /// Whether StartSession may start a session with `target`: a well-formed id when no nodes
    /// are configured, else an online configured node.
    pub fn is_connected(&self, target: &str) -> bool {
        match &*self.lock() {
            None => is_instance_id(target),
            Some(nodes) => nodes
                .iter()
                .any(|n| n.id == target && n.ping_status == PingStatus::Online),
        }
    }

    /// The nodes matching every filter, by id. With no nodes configured, the well-formed ids
    /// an `InstanceIds` filter names count as online nodes without tags.
    ///
    /// # Errors
    /// A filter key the emulator does not know (the API's `InvalidFilterKey`).
    pub fn describe(&self, filters: &[Filter]) -> Result<Vec<InstanceSettings>, String> {
        if let Some(unknown) = filters.iter().find(|f| {
            !(f.key.starts_with("tag:")
                || matches!(
                    f.key.as_str(),
                    "tag-key" | "PingStatus" | "InstanceIds" | "ResourceType"
                ))
        }) {
            return Err(format!(
                "filter key {:?} is not one of {}",
                unknown.key,
                FILTER_KEYS.join(", ")
            ));
        }
        let nodes = match &*self.lock() {
            Some(nodes) => nodes.clone(),
            None => filters
                .iter()
                .filter(|f| f.key == "InstanceIds")
                .flat_map(|f| f.values.iter())
                .filter(|id| is_instance_id(id))
                .map(|id| InstanceSettings::online(id.clone(), &[]))
                .collect(),
        };
        let mut matched: Vec<InstanceSettings> = nodes
            .into_iter()
            .filter(|node| filters.iter().all(|f| matches(node, f)))
            .collect();
        matched.sort_by(|a, b| a.id.cmp(&b.id));
        matched.dedup_by(|a, b| a.id == b.id);
        Ok(matched)
    }

    /// Replaces node `id` as an Auto Scaling group would: `new_id` gets its tags and comes
    /// online, `id` goes `ConnectionLost`. Returns the old node as it was.
    ///
    /// # Errors
    /// No node `id` is configured, or `new_id` is taken.
    pub fn replace(&self, id: &str, new_id: &str) -> Result<InstanceSettings, String> {
        let mut guard = self.lock();
        let nodes = guard
            .as_mut()
            .ok_or_else(|| "no instances are configured".to_owned())?;
        if nodes.iter().any(|n| n.id == new_id) {
            return Err(format!("instance {new_id} exists already"));
        }
        let old = nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| format!("no instance {id}"))?;
        let before = old.clone();
        old.ping_status = PingStatus::ConnectionLost;
        let replacement = InstanceSettings {
            id: new_id.to_owned(),
            tags: before.tags.clone(),
            ping_status: PingStatus::Online,
        };
        nodes.push(replacement);
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(before)
    }

    /// Sets node `id`'s ping status.
    ///
    /// # Errors
    /// No node `id` is configured.
    pub fn set_ping_status(&self, id: &str, status: PingStatus) -> Result<(), String> {
        let mut guard = self.lock();
        let node = guard
            .as_mut()
            .and_then(|nodes| nodes.iter_mut().find(|n| n.id == id))
            .ok_or_else(|| format!("no instance {id}"))?;
        node.ping_status = status;
        Ok(())
    }
}

fn matches(node: &InstanceSettings, filter: &Filter) -> bool {
    let any = |candidate: &str| filter.values.iter().any(|v| v == candidate);
    if let Some(key) = filter.key.strip_prefix("tag:") {
        return node.tags.get(key).is_some_and(|value| any(value));
    }
    match filter.key.as_str() {
        "tag-key" => node.tags.keys().any(|k| any(k)),
        "PingStatus" => any(node.ping_status.as_str()),
        "InstanceIds" => any(&node.id),
        "ResourceType" => any(resource_type(&node.id)),
        _ => false,
    }
}

/// `EC2Instance` for `i-…`, `ManagedInstance` for `mi-…`.
pub fn resource_type(id: &str) -> &'static str {
    if id.starts_with("mi-") {
        "ManagedInstance"
    } else {
        "EC2Instance"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(key: &str, values: &[&str]) -> Filter {
        Filter {
            key: key.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    fn ids(nodes: &[InstanceSettings]) -> Vec<&str> {
        nodes.iter().map(|n| n.id.as_str()).collect()
    }

    #[test]
    fn filters_select_by_tag_and_status_and_replacement_moves_the_tags() {
        let instances = Instances::new(&[
            InstanceSettings::online("i-0bbb", &[("Name", "bastion")]),
            InstanceSettings::online("i-0aaa", &[("Name", "bastion"), ("Env", "prod")]),
            InstanceSettings::online("i-0ccc", &[("Name", "web")]),
        ]);
        let bastions = [
            filter("tag:Name", &["bastion"]),
            filter("PingStatus", &["Online"]),
        ];
        assert_eq!(
            ids(&instances.describe(&bastions).expect("filters")),
            ["i-0aaa", "i-0bbb"]
        );
        assert!(instances.is_connected("i-0aaa"));
        assert!(!instances.is_connected("i-0fff"));

        let old = instances.replace("i-0aaa", "i-0ddd").expect("replaced");
        assert_eq!(old.tags.get("Env").map(String::as_str), Some("prod"));
        assert!(!instances.is_connected("i-0aaa"));
        assert!(instances.is_connected("i-0ddd"));
        assert_eq!(
            ids(&instances.describe(&bastions).expect("filters")),
            ["i-0bbb", "i-0ddd"]
        );
        assert!(instances.replace("i-0zzz", "i-1").is_err());
        assert!(
            instances
                .describe(&[filter("Platform", &["Linux"])])
                .is_err()
        );
        assert_eq!(
            ids(&instances
                .describe(&[filter("tag-key", &["Env"])])
                .expect("tag-key")),
            ["i-0aaa", "i-0ddd"]
        );
    }

    #[test]
    fn without_configured_nodes_every_instance_id_is_online() {
        let instances = Instances::new(&[]);
        assert!(instances.is_connected("i-0123456789abcdef0"));
        assert!(!instances.is_connected("server-1"));
        let found = instances
            .describe(&[filter("InstanceIds", &["i-0123", "nope"])])
            .expect("filters");
        assert_eq!(ids(&found), ["i-0123"]);
        assert!(
            instances
                .describe(&[filter("tag:Name", &["bastion"])])
                .expect("filters")
                .is_empty()
        );
    }

    #[test]
    fn the_flag_parses() {
        let parsed = InstanceSettings::parse_flag("i-0abc:Name=bastion,Env=prod").expect("flag");
        assert_eq!(parsed.id, "i-0abc");
        assert_eq!(parsed.tags.len(), 2);
        assert!(InstanceSettings::parse_flag("bastion").is_err());
        assert!(InstanceSettings::parse_flag("i-0abc:Name").is_err());
        assert_eq!(
            InstanceSettings::parse_flag("mi-1").expect("bare").tags,
            BTreeMap::new()
        );
    }
}
