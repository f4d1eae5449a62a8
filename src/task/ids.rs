//! The three names that travel between actors: a task's id, a ComfyUI prompt's id, a backend's name.
//!
//! Each is a string underneath (they are stored and sent as strings), but a distinct type in messages,
//! so a prompt id cannot be passed where a task id is meant. They are made here (a new id) or taken
//! from a stored row or a checked request; `as_str` hands the text to SQL and JSON.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// comfyd's id for a task: a UUID, chosen at submit, the `id` of every answer and webhook.
    TaskId
);

string_id!(
    /// ComfyUI's id for one run of a graph (`prompt_id`): chosen by comfyd at submit, a new one per
    /// dispatch after a requeue; the `comfyui_task_id` of the original's answer.
    PromptId
);

string_id!(
    /// A backend's name: its configured name or its URL, unique within one comfyd.
    BackendName
);

// A fresh id is not a default value: `new` makes one, there is no `Default`.
#[allow(clippy::new_without_default)]
impl TaskId {
    pub fn new() -> TaskId {
        TaskId(uuid::Uuid::new_v4().to_string())
    }
}

#[allow(clippy::new_without_default)]
impl PromptId {
    pub fn new() -> PromptId {
        PromptId(uuid::Uuid::new_v4().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_their_text_in_json_and_display() {
        let t = TaskId::from("3f2a");
        assert_eq!(serde_json::to_string(&t).expect("serializes"), "\"3f2a\"");
        assert_eq!(t.to_string(), "3f2a");
        let back: TaskId = serde_json::from_str("\"3f2a\"").expect("parses");
        assert_eq!(back, t);
    }

    #[test]
    fn new_ids_are_distinct_uuids() {
        let (a, b) = (PromptId::new(), PromptId::new());
        assert_ne!(a, b);
        assert!(uuid::Uuid::parse_str(a.as_str()).is_ok());
    }

    #[test]
    fn a_map_keyed_by_id_is_found_by_str() {
        let mut m = std::collections::HashMap::new();
        m.insert(BackendName::from("gpu-1"), 1);
        assert_eq!(m.get("gpu-1"), Some(&1));
    }
}
