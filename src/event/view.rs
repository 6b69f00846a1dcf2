//! Alerts read in place: a webhook's alerts borrowed from the body that carried them, so that
//! intake records them and asks the rules without copying each label into its own allocation
//! (those copies, and freeing them, were a fifth of the CPU a 50-alert payload cost). An owned
//! [`Alert`] is made only for an alert a rule matches.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::recorded::RecordedAlertRef;
use super::{Alert, AlertStatus, SourceKind};

/// What intake needs of an alert, whether owned ([`Alert`]) or borrowed from its delivery.
pub trait AlertView {
    /// The event id: `{fingerprint}-{startsAt as Unix seconds}`.
    fn id(&self) -> &str;
    fn source(&self) -> SourceKind;
    fn status(&self) -> AlertStatus;
    /// The `alertname` label ("" when missing).
    fn name(&self) -> &str;
    fn label(&self, name: &str) -> Option<&str>;
    fn starts_at(&self) -> DateTime<Utc>;
    /// What the `received` record writes of it.
    fn recorded(&self) -> RecordedAlertRef<'_>;
    /// The alert, owned (for the rules' decisions and the actions after).
    fn to_alert(&self) -> Alert;
}

impl AlertView for Alert {
    fn id(&self) -> &str {
        &self.id
    }
    fn source(&self) -> SourceKind {
        self.source
    }
    fn status(&self) -> AlertStatus {
        self.status
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn label(&self, name: &str) -> Option<&str> {
        Alert::label(self, name)
    }
    fn starts_at(&self) -> DateTime<Utc> {
        self.starts_at
    }
    fn recorded(&self) -> RecordedAlertRef<'_> {
        RecordedAlertRef::from(self)
    }
    fn to_alert(&self) -> Alert {
        self.clone()
    }
}

/// A label set (or annotations) read in place: the pairs sorted by name, each name once (the
/// last value given wins, as in a map), the text borrowed from the body unless it had escapes.
/// Written as a JSON object in name order, byte for byte as a `BTreeMap<String, String>` is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Labels<'a> {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_ref().cmp(name)).ok().map(|i| self.0[i].1.as_ref())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in name order.
    pub fn pairs(&self) -> &[(Cow<'a, str>, Cow<'a, str>)] {
        &self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    /// Owned, as an [`Alert`] holds them.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// From pairs in any order (the last value of a name wins).
    pub fn from_pairs(mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> Labels<'a> {
        // Stable: of the pairs with one name, the last stays last; it replaces the first kept.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(&mut later.1, &mut kept.1);
            }
            same
        });
        Labels(pairs)
    }
}

impl Serialize for Labels<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k.as_ref(), v.as_ref())?;
        }
        map.end()
    }
}

/// One string, borrowed from the input when it has no escapes.
struct InPlace<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for InPlace<'a> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        de.deserialize_str(V).map(InPlace)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Labels<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((InPlace(k), InPlace(v))) = map.next_entry::<InPlace<'a>, InPlace<'a>>()? {
                    pairs.push((k, v));
                }
                Ok(Labels::from_pairs(pairs))
            }
        }
        de.deserialize_map(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_borrow_what_has_no_escapes_and_read_like_a_map() {
        let json = r#"{"b":"2","a":"1","c":"x\"y","a":"again"}"#;
        let labels: Labels = serde_json::from_str(json).unwrap();
        let map: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(labels.to_map(), map, "the last value of a name wins, as in a map");
        assert_eq!(labels.get("a"), Some("again"));
        assert_eq!(labels.get("c"), Some("x\"y"));
        assert_eq!(labels.get("d"), None);
        assert!(matches!(labels.0[1].1, Cow::Borrowed(_)), "no copy of a plain value");
        assert!(matches!(labels.0[2].1, Cow::Owned(_)), "an escaped value is decoded");
        assert_eq!(serde_json::to_string(&labels).unwrap(), serde_json::to_string(&map).unwrap());
    }

    proptest! {
        /// Whatever the names and values (escapes, repeats, any order), the labels read and
        /// write exactly as a `BTreeMap<String, String>` does.
        #[test]
        fn labels_are_a_map_byte_for_byte(pairs in prop::collection::vec(("[a-c\"\\\\é]{0,3}", ".{0,4}"), 0..8)) {
            let mut json = String::from("{");
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push_str(&serde_json::to_string(k).unwrap());
                json.push(':');
                json.push_str(&serde_json::to_string(v).unwrap());
            }
            json.push('}');
            let labels: Labels = serde_json::from_str(&json).unwrap();
            let map: BTreeMap<String, String> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(labels.to_map(), map.clone());
            prop_assert_eq!(serde_json::to_string(&labels).unwrap(), serde_json::to_string(&map).unwrap());
            for (k, v) in &map {
                prop_assert_eq!(labels.get(k), Some(v.as_str()));
            }
        }
    }
}
