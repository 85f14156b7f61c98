//! A borrowed, canonical view of a JSON body: what [`super::Event::parse`] reads an event through.
//!
//! Building a `serde_json::Value` allocates a `String` for every key and string value and a B-tree
//! node for every object, and dropping it frees them all again (often on another thread). A profile
//! of the bridge showed that build-and-drop as the largest single cost per event. A [`Node`] borrows
//! every string that has no escape sequence straight from the frame, and keeps an object as one
//! `Vec` of entries, sorted by key once while parsing. That is all the parse needs: the event type,
//! the `current`/`previous` checks, the client id, the object's ref, an id pointer, and the content
//! id, which is the XXH3-128 hash of the canonical serialisation. [`Node`]'s `Serialize` writes exactly the
//! bytes a `serde_json::Value` of the same body writes (keys sorted bytewise, the last of duplicated
//! keys wins, numbers as `serde_json::Number`), so ids are unchanged; a unit test and the
//! `parse_event` fuzz target hold the two side by side.
//!
//! The full `Value` is still built, lazily, when a route needs it (a `where` filter, a JSON-pointer
//! template, redaction): see [`super::Event::body`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Number;

/// One JSON value, borrowing from the bytes it was parsed from where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Entries sorted by key (bytewise, as `BTreeMap<String, _>` orders them), keys unique.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Parses `raw` (serde_json's grammar, its recursion limit and its errors).
    pub fn parse(raw: &'a [u8]) -> Result<Self, serde_json::Error> {
        match std::str::from_utf8(raw) {
            // One pass over the whole body instead of a UTF-8 check per string.
            Ok(text) => Self::parse_str(text),
            // Not UTF-8: serde_json's byte parser fails on it too, with the position it reports.
            Err(_) => serde_json::from_slice(raw),
        }
    }

    /// Parses text already known to be UTF-8 (as [`Node::parse`], without checking that again).
    pub fn parse_str(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The value of `key` when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Object(entries) => entries
                .binary_search_by(|(k, _)| k.as_bytes().cmp(key.as_bytes()))
                .ok()
                .map(|i| &entries[i].1),
            _ => None,
        }
    }

    /// RFC 6901 JSON pointer lookup, with `serde_json::Value::pointer`'s rules.
    pub fn pointer(&self, pointer: &str) -> Option<&Node<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        if !pointer.starts_with('/') {
            return None;
        }
        pointer
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .try_fold(self, |target, token| match target {
                Node::Object(_) => target.get(&token),
                Node::Array(list) => parse_index(&token).and_then(|i| list.get(i)),
                _ => None,
            })
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Node::Null)
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Node::Object(_))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::String(s) => Some(s),
            _ => None,
        }
    }
}

impl Node<'_> {
    /// Appends the canonical JSON of this value to `out`: the bytes `serde_json::to_vec` writes for
    /// a `Value` of the same body, without going through a serializer for every string. A string
    /// borrowed from the input had no escape sequence there, so it holds no `"`, `\\` or control
    /// character (JSON forbids them raw) and is written as it is; an owned one (it was escaped in
    /// the input) is escaped by serde_json, and numbers are written by serde_json, as for a `Value`.
    pub fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            Node::Null => out.extend_from_slice(b"null"),
            Node::Bool(true) => out.extend_from_slice(b"true"),
            Node::Bool(false) => out.extend_from_slice(b"false"),
            // Writing into a Vec cannot fail.
            Node::Number(n) => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
            Node::String(s) => write_str(s, out),
            Node::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write_canonical(out);
                }
                out.push(b']');
            }
            Node::Object(entries) => {
                out.push(b'{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(k, out);
                    out.push(b':');
                    v.write_canonical(out);
                }
                out.push(b'}');
            }
        }
    }
}

// The `Cow` variant is the point: borrowed means "had no escape in the input".
#[allow(clippy::ptr_arg)]
fn write_str(s: &Cow<'_, str>, out: &mut Vec<u8>) {
    match s {
        Cow::Borrowed(b) => {
            out.push(b'"');
            out.extend_from_slice(b.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(o) => {
            let _ = serde_json::to_writer(&mut *out, o);
        }
    }
}

/// An array index as `serde_json` accepts it: digits only, no leading `+`, no leading zero.
fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

impl Serialize for Node<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Null => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Number(n) => n.serialize(s),
            Node::String(v) => s.serialize_str(v),
            Node::Array(v) => s.collect_seq(v),
            Node::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// A string that borrows from the input when serde_json can hand it over unescaped.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any valid JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Node<'de>, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Node<'de>, E> {
        // As `serde_json::Value` does: a non-finite float (which JSON text cannot hold) is null.
        Ok(Number::from_f64(v).map_or(Node::Null, Node::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Node<'de>, E> {
        Ok(Node::String(Cow::Owned(v)))
    }

    fn visit_none<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        Deserialize::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            v.push(item);
        }
        Ok(Node::Array(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        // serde_json gives no size hint; 8 entries hold most of an event's objects without a
        // reallocation (growing from empty was about 6 reallocations per event).
        let mut entries: Vec<(Cow<'de, str>, Node<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(Key(k)) = map.next_key()? {
            let v: Node<'de> = map.next_value()?;
            entries.push((k, v));
        }
        // Stable, so among equal keys the later entry stays later; then keep that last one, as
        // inserting into a map would.
        entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        entries.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                std::mem::swap(later, kept);
                true
            } else {
                false
            }
        });
        Ok(Node::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn same_bytes(json: &str) {
        let n = Node::parse(json.as_bytes()).unwrap();
        let v: Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            serde_json::to_string(&v).unwrap(),
            "{json}"
        );
        let mut fast = Vec::new();
        n.write_canonical(&mut fast);
        assert_eq!(fast, serde_json::to_vec(&v).unwrap(), "{json}");
    }

    #[test]
    fn serialises_exactly_as_value() {
        for j in [
            r#"{"b":1,"a":{"d":[1,2,{"z":null,"y":true}],"c":"x"}}"#,
            r#"{"a":1,"a":2,"b":{"k":"first","k":"second"}}"#,
            r#"{"esc\"aped":"line\nbreak \u00e9 \ud83d\ude00","é":1,"e":2,"E":3}"#,
            r#"{"n":[0,-0,1.0,-1.5e300,18446744073709551615,18446744073709551617,-9223372036854775808,1e-7,123456789012345678901234567890]}"#,
            r#"[]"#,
            r#"{}"#,
            r#""just a string""#,
            r#"{"":{"":[]}}"#,
        ] {
            same_bytes(j);
        }
    }

    #[test]
    fn pointer_follows_value_rules() {
        let j = r#"{"a":{"b/c":[10,{"d~e":"x"}]},"0":"zero","":{"":1}}"#;
        let n = Node::parse(j.as_bytes()).unwrap();
        let v: Value = serde_json::from_str(j).unwrap();
        for p in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/d~0e",
            "/a/b~1c/01",
            "/a/b~1c/+1",
            "/a/b~1c/9",
            "/0",
            "/",
            "//",
            "a",
            "/missing",
            "/a/b~1c/1/d~0e/x",
        ] {
            let got = n.pointer(p).map(|x| serde_json::to_value(x).unwrap());
            assert_eq!(got.as_ref(), v.pointer(p), "{p}");
        }
    }

    #[test]
    fn errors_and_depth_limit_match_serde_json() {
        for bad in ["{", "{\"a\":}", "nul", "[1,]", "\"\\x\""] {
            assert!(Node::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        // Not UTF-8, in a string and outside one: the byte parser's own error and position.
        for bad in [
            &b"{\"a\":\"\xff\xfe\"}"[..],
            b"{\"a\":1}\xc3",
            b"\xef\xbb\xbf{}",
        ] {
            let ours = Node::parse(bad).unwrap_err().to_string();
            let theirs = serde_json::from_slice::<Value>(bad)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs);
        }
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let e = Node::parse(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
