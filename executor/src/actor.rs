//! Actor keys: `<atespace>/<name>`, and the runsc container id derived from them.
//!
//! Both segments are DNS-1123 labels (they are DNS labels in
//! `<actor>.<atespace>.actors.resources.substrate.ate.dev`), so they never contain `_`, and
//! the container id `<atespace>_<name>` maps back to the key unambiguously (the executor
//! uses that to adopt a running sandbox whose state file was lost).

use std::fmt;
use std::str::FromStr;

/// A malformed actor key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorKeyError {
    #[error("actor key {key:?} must have the form <atespace>/<name>")]
    Shape { key: String },
    #[error("actor key {key:?}: {part} {value:?} is not a DNS-1123 label: {detail}")]
    Label {
        key: String,
        part: &'static str,
        value: String,
        detail: String,
    },
    #[error("{id:?} is not a substrate container id (<atespace>_<name>)")]
    ContainerId { id: String },
}

/// The identity of an actor: its atespace and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorKey {
    atespace: String,
    name: String,
}

impl ActorKey {
    /// Builds a key from its parts, validating both.
    pub fn new(atespace: &str, name: &str) -> Result<Self, ActorKeyError> {
        let key = format!("{atespace}/{name}");
        for (part, value) in [("atespace", atespace), ("name", name)] {
            let errs = crds::validation::dns1123_label(value);
            if !errs.is_empty() {
                return Err(ActorKeyError::Label {
                    key,
                    part,
                    value: value.to_string(),
                    detail: errs.join("; "),
                });
            }
        }
        Ok(Self {
            atespace: atespace.to_string(),
            name: name.to_string(),
        })
    }

    pub fn atespace(&self) -> &str {
        &self.atespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The runsc container id for this actor: `<atespace>_<name>`.
    pub fn container_id(&self) -> String {
        format!("{}_{}", self.atespace, self.name)
    }

    /// Inverse of [`ActorKey::container_id`].
    pub fn from_container_id(id: &str) -> Result<Self, ActorKeyError> {
        let (atespace, name) = id
            .split_once('_')
            .ok_or_else(|| ActorKeyError::ContainerId { id: id.to_string() })?;
        Self::new(atespace, name).map_err(|_| ActorKeyError::ContainerId { id: id.to_string() })
    }
}

impl FromStr for ActorKey {
    type Err = ActorKeyError;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(atespace), Some(name), None) => Self::new(atespace, name),
            _ => Err(ActorKeyError::Shape {
                key: key.to_string(),
            }),
        }
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.atespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let key: ActorKey = "team-a/web-1".parse().unwrap();
        assert_eq!(key.atespace(), "team-a");
        assert_eq!(key.name(), "web-1");
        assert_eq!(key.to_string(), "team-a/web-1");
        assert_eq!(key.container_id(), "team-a_web-1");
        assert_eq!(ActorKey::from_container_id("team-a_web-1").unwrap(), key);
    }

    #[test]
    fn rejects_bad_keys_precisely() {
        for bad in ["", "web", "a/b/c", "/x", "x/"] {
            let err = bad.parse::<ActorKey>().unwrap_err();
            assert!(
                matches!(
                    err,
                    ActorKeyError::Shape { .. } | ActorKeyError::Label { .. }
                ),
                "{bad}: {err}"
            );
        }
        let err = "Team/web".parse::<ActorKey>().unwrap_err();
        assert!(
            matches!(&err, ActorKeyError::Label { part: "atespace", value, .. } if value == "Team"),
            "{err}"
        );
        let err = "team/we_b".parse::<ActorKey>().unwrap_err();
        assert!(
            matches!(&err, ActorKeyError::Label { part: "name", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("we_b"));
    }

    #[test]
    fn rejects_foreign_container_ids() {
        assert!(ActorKey::from_container_id("nounderscore").is_err());
        assert!(ActorKey::from_container_id("a_b_c").is_err());
        assert!(ActorKey::from_container_id("A_b").is_err());
    }
}
