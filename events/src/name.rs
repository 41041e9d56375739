//! A job's type or queue name: interned, so a million jobs of a few types share a few strings.
//!
//! A `String` per name cost two 32-byte allocations per job in the write model. A `Name` is a
//! shared pointer into one table of the names in use; the table drops names no job holds any
//! more when it has doubled since it last looked.

use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A thin pointer (8 bytes, where an `Arc<str>` takes 16): a job holds two, and the write
/// model's slot stays within a size class (`command_svc::model`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<Box<str>>);

struct Table {
    names: HashSet<Name>,
    /// Its size after it last dropped unused names.
    kept: usize,
}

static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(|| {
    Mutex::new(Table {
        names: HashSet::new(),
        kept: 0,
    })
});

impl Name {
    pub fn new(s: &str) -> Self {
        let mut t = TABLE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = t.names.get(s) {
            return n.clone();
        }
        if t.names.len() >= 1024 && t.names.len() >= 2 * t.kept {
            t.names.retain(|n| Arc::strong_count(&n.0) > 1);
            t.kept = t.names.len();
        }
        let n = Name(Arc::new(Box::from(s)));
        t.names.insert(n.clone());
        n
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        **self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        **self.0 == **other
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == **other.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Name;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Name, E> {
                Ok(Name::new(v))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_share_one_string_and_unused_ones_are_dropped() {
        let a = Name::new("email.send");
        let b: Name = serde_json::from_str("\"email.send\"").unwrap();
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "email.send");
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"email.send\"");
        let packed = rmp_serde::to_vec(&a).unwrap();
        assert!(Arc::ptr_eq(
            &rmp_serde::from_slice::<Name>(&packed).unwrap().0,
            &a.0
        ));

        // Names nobody holds go when the table has doubled; held ones stay shared.
        for i in 0..5000 {
            Name::new(&format!("gone-{i}"));
        }
        let t = TABLE.lock().unwrap();
        assert!(t.names.len() < 5000, "{} names kept", t.names.len());
        assert!(t.names.contains("email.send"));
    }
}
