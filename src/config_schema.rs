//! Every problem of a configuration file at once: the schema of
//! [`Config`](crate::config::Config) read off its serde derive, and a walk
//! of the parsed TOML against it.
//!
//! A plain `toml::from_str::<Config>` stops at the first unknown key or bad
//! value, so an operator fixes one line per run. Here the file is parsed to
//! a `toml::Value` first (a syntax error is reported with its line and a
//! hint), walked against the schema (every unknown key, every value of the
//! wrong type, every enum value not accepted, each with its dotted path and
//! what is accepted there), the bad entries are taken out, and what is left
//! is deserialized, so the semantic checks (`Config::problems`) run too.
//!
//! The schema is not a second list of keys to keep in step: [`trace`] runs
//! `Config::deserialize` against a deserializer that records what the derive
//! asks for (the field names of each struct, the variant names of each
//! enum, the kind of each value) instead of reading input. A key added to a
//! config struct is known here with no change. The one requirement is that
//! config types deserialize the way derives do: a hand-written
//! `Deserialize` that calls `deserialize_any`, or that refuses the neutral
//! values the tracer hands out (0, "", false), is reported by the test
//! `schema_covers_the_config`.

use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, Visitor};

/// What the configuration accepts at one place in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// Not traced (a type the tracer could not see into): anything goes here,
    /// and the final deserialize judges it.
    Any,
    Bool,
    /// An integer; `signed` false refuses negative numbers.
    Int { signed: bool },
    Float,
    Str,
    /// A table with exactly these keys (all optional: configs use `#[serde(default)]`).
    Struct(Vec<(&'static str, Schema)>),
    /// A string, one of these.
    Enum(&'static [&'static str]),
    /// An array of these.
    Seq(Box<Schema>),
    /// A table with free keys and these values (`[groups]`).
    Map(Box<Schema>),
}

/// The schema of `T`, read off its `Deserialize` impl.
pub fn trace<'de, T: serde::Deserialize<'de>>() -> Result<Schema, String> {
    let mut s = Schema::Any;
    T::deserialize(Tracer { out: &mut s }).map_err(|e: TraceError| e.0)?;
    Ok(s)
}

#[derive(Debug)]
struct TraceError(String);

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TraceError {}
impl de::Error for TraceError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        TraceError(msg.to_string())
    }
}

/// A deserializer that reads no input: it records the shape asked of it in
/// `out` and hands the visitor a neutral value of that shape.
struct Tracer<'a> {
    out: &'a mut Schema,
}

macro_rules! traced {
    ($($method:ident => $schema:expr, $visit:ident($value:expr);)*) => {
        $(fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
            *self.out = $schema;
            v.$visit($value)
        })*
    };
}

impl<'de> Deserializer<'de> for Tracer<'_> {
    type Error = TraceError;

    traced! {
        deserialize_bool => Schema::Bool, visit_bool(false);
        deserialize_i8 => Schema::Int { signed: true }, visit_i8(0);
        deserialize_i16 => Schema::Int { signed: true }, visit_i16(0);
        deserialize_i32 => Schema::Int { signed: true }, visit_i32(0);
        deserialize_i64 => Schema::Int { signed: true }, visit_i64(0);
        deserialize_u8 => Schema::Int { signed: false }, visit_u8(0);
        deserialize_u16 => Schema::Int { signed: false }, visit_u16(0);
        deserialize_u32 => Schema::Int { signed: false }, visit_u32(0);
        deserialize_u64 => Schema::Int { signed: false }, visit_u64(0);
        deserialize_f32 => Schema::Float, visit_f32(0.0);
        deserialize_f64 => Schema::Float, visit_f64(0.0);
        deserialize_char => Schema::Str, visit_char('x');
        deserialize_str => Schema::Str, visit_str("");
        deserialize_string => Schema::Str, visit_string(String::new());
        deserialize_identifier => Schema::Str, visit_str("");
        deserialize_bytes => Schema::Any, visit_bytes(&[]);
        deserialize_byte_buf => Schema::Any, visit_byte_buf(Vec::new());
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        *self.out = Schema::Any;
        v.visit_unit()
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, TraceError> {
        Err(TraceError("a config type deserializes with deserialize_any: its keys cannot be traced".into()))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        v.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        // A TOML file has no null: an optional key is just the inner value.
        v.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, TraceError> {
        *self.out = Schema::Any;
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> Result<V::Value, TraceError> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        let mut elem = Schema::Any;
        // One element: enough to see its shape.
        let r = v.visit_seq(OneSeq { out: Some(&mut elem) });
        *self.out = Schema::Seq(Box::new(elem));
        r
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, TraceError> {
        *self.out = Schema::Any;
        v.visit_seq(OneSeq { out: None })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, len: usize, v: V) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, TraceError> {
        let mut value = Schema::Any;
        let r = v.visit_map(OneEntry { out: Some(&mut value), key_given: false });
        *self.out = Schema::Map(Box::new(value));
        r
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &'static str, fields: &'static [&'static str], v: V) -> Result<V::Value, TraceError> {
        let mut schemas: Vec<Schema> = fields.iter().map(|_| Schema::Any).collect();
        let r = v.visit_seq(Fields { out: &mut schemas, next: 0 });
        *self.out = Schema::Struct(fields.iter().copied().zip(schemas).collect());
        r
    }

    fn deserialize_enum<V: Visitor<'de>>(self, _: &'static str, variants: &'static [&'static str], v: V) -> Result<V::Value, TraceError> {
        *self.out = Schema::Enum(variants);
        v.visit_enum(FirstVariant)
    }
}

/// A struct's fields in order, each traced into its slot.
struct Fields<'a> {
    out: &'a mut [Schema],
    next: usize,
}

impl<'de> de::SeqAccess<'de> for Fields<'_> {
    type Error = TraceError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        let Some(slot) = self.out.get_mut(self.next) else { return Ok(None) };
        self.next += 1;
        seed.deserialize(Tracer { out: slot }).map(Some)
    }
}

/// A sequence of one traced element (or none when `out` is taken).
struct OneSeq<'a> {
    out: Option<&'a mut Schema>,
}

impl<'de> de::SeqAccess<'de> for OneSeq<'_> {
    type Error = TraceError;
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        match self.out.take() {
            Some(out) => seed.deserialize(Tracer { out }).map(Some),
            None => Ok(None),
        }
    }
}

/// A map of one entry: a string key, a traced value.
struct OneEntry<'a> {
    out: Option<&'a mut Schema>,
    key_given: bool,
}

impl<'de> de::MapAccess<'de> for OneEntry<'_> {
    type Error = TraceError;
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        if self.key_given || self.out.is_none() {
            return Ok(None);
        }
        self.key_given = true;
        seed.deserialize("k".into_deserializer()).map(Some)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let out = self.out.take().ok_or_else(|| TraceError("map value without key".into()))?;
        seed.deserialize(Tracer { out })
    }
}

/// The first variant of an enum, as a unit variant (config enums are plain names).
struct FirstVariant;

impl<'de> de::EnumAccess<'de> for FirstVariant {
    type Error = TraceError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TraceError> {
        let idx: de::value::U32Deserializer<TraceError> = 0u32.into_deserializer();
        Ok((seed.deserialize(idx)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for FirstVariant {
    type Error = TraceError;
    fn unit_variant(self) -> Result<(), TraceError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, TraceError> {
        let mut s = Schema::Any;
        seed.deserialize(Tracer { out: &mut s })
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, v: V) -> Result<V::Value, TraceError> {
        v.visit_seq(OneSeq { out: None })
    }
    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, TraceError> {
        let mut schemas: Vec<Schema> = fields.iter().map(|_| Schema::Any).collect();
        v.visit_seq(Fields { out: &mut schemas, next: 0 })
    }
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

/// Checks `value` against `schema`, pushing one line per problem onto
/// `errs`, and removes every entry it complained about so that what is left
/// deserializes. `path` is the dotted key of `value` ("" at the top).
pub fn walk(value: &mut toml::Value, schema: &Schema, path: &str, errs: &mut Vec<String>) -> bool {
    use toml::Value as V;
    let ok = match (schema, &mut *value) {
        (Schema::Any, _) => true,
        (Schema::Bool, V::Boolean(_)) | (Schema::Str, V::String(_)) | (Schema::Float, V::Float(_) | V::Integer(_)) => true,
        (Schema::Int { signed }, V::Integer(i)) => {
            if !*signed && *i < 0 {
                errs.push(format!("{path} = {i}: must not be negative"));
                return false;
            }
            true
        }
        (Schema::Enum(variants), V::String(s)) => {
            if variants.contains(&s.as_str()) {
                true
            } else {
                errs.push(format!("{path} = {s:?} is not accepted; one of: {}", quoted(variants)));
                return false;
            }
        }
        (Schema::Seq(elem), V::Array(items)) => {
            let mut bad = Vec::new();
            for (i, item) in items.iter_mut().enumerate() {
                if !walk(item, elem, &format!("{path}[{i}]"), errs) {
                    bad.push(i);
                }
            }
            for i in bad.into_iter().rev() {
                items.remove(i);
            }
            true
        }
        (Schema::Map(val), V::Table(t)) => {
            let keys: Vec<String> = t.keys().cloned().collect();
            for k in keys {
                let ok = t.get_mut(&k).is_some_and(|v| walk(v, val, &join(path, &k), errs));
                if !ok {
                    t.remove(&k);
                }
            }
            true
        }
        (Schema::Struct(fields), V::Table(t)) => {
            let keys: Vec<String> = t.keys().cloned().collect();
            for k in keys {
                let ok = match fields.iter().find(|(name, _)| *name == k) {
                    Some((_, s)) => t.get_mut(&k).is_some_and(|v| walk(v, s, &join(path, &k), errs)),
                    None => {
                        errs.push(unknown_key(path, &k, fields));
                        false
                    }
                };
                if !ok {
                    t.remove(&k);
                }
            }
            true
        }
        _ => false,
    };
    if !ok {
        errs.push(format!("{} = {}: expected {}", if path.is_empty() { "the file" } else { path }, shown(value), expected(schema)));
    }
    ok
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn quoted(names: &[&str]) -> String {
    names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
}

/// "unknown key server.listne (did you mean listen?); keys of [server]: ...".
fn unknown_key(path: &str, key: &str, fields: &[(&'static str, Schema)]) -> String {
    let near = fields.iter().map(|(n, _)| *n).filter(|n| edit_distance(n, key) <= 2 || (key.len() > 3 && n.contains(key))).min_by_key(|n| edit_distance(n, key));
    let hint = near.map(|n| format!(" (did you mean {n}?)")).unwrap_or_default();
    let names: Vec<String> = fields
        .iter()
        .map(|(n, s)| match s {
            Schema::Struct(_) | Schema::Map(_) => format!("[{}]", join(path, n)),
            Schema::Seq(e) if matches!(**e, Schema::Struct(_)) => format!("[[{}]]", join(path, n)),
            _ => n.to_string(),
        })
        .collect();
    let place = if path.is_empty() { "sections".to_string() } else { format!("keys of [{path}]") };
    format!("unknown key {}{hint}; {place}: {}", join(path, key), names.join(", "))
}

fn expected(s: &Schema) -> String {
    match s {
        Schema::Any => "a value".into(),
        Schema::Bool => "true or false".into(),
        Schema::Int { signed: false } => "a whole number ≥ 0".into(),
        Schema::Int { signed: true } => "a whole number".into(),
        Schema::Float => "a number".into(),
        Schema::Str => "a string in double quotes".into(),
        Schema::Struct(_) => "a table ([section] or { key = value })".into(),
        Schema::Enum(v) => format!("one of {}", quoted(v)),
        Schema::Seq(e) => format!("a list [..] of {}", expected(e)),
        Schema::Map(v) => format!("a table of name = {}", expected(v)),
    }
}

/// A value as the operator wrote it, shortened.
fn shown(v: &toml::Value) -> String {
    let s = match v {
        toml::Value::Table(_) => "a table".to_string(),
        toml::Value::Array(_) => "a list".to_string(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// A TOML syntax error as the parser reports it (line, column, the line
/// itself), plus a hint for the usual mistakes.
pub fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let mut msg = e.to_string().trim_end().to_string();
    let line = e.span().map(|sp| text[..sp.start.min(text.len())].matches('\n').count());
    let line_text = line.and_then(|l| text.lines().nth(l)).unwrap_or("").trim();
    let hint = match line_text.split_once('=') {
        Some((k, v)) => {
            let v = v.trim();
            let bare = !v.is_empty()
                && !v.starts_with(['"', '\'', '[', '{'])
                && v.parse::<f64>().is_err()
                && v != "true"
                && v != "false";
            if bare {
                format!("strings need double quotes: {} = \"{}\"", k.trim(), v.trim_end_matches(['"', '\'']))
            } else if v.starts_with('"') && v.matches('"').count() % 2 == 1 {
                "a string is missing its closing double quote".to_string()
            } else if v.starts_with('[') && !v.contains(']') {
                "a list is missing its closing ] (a list may span lines, but must close)".to_string()
            } else {
                "each line is `key = value` under a [section] header; strings in double quotes, lists in [ ]".to_string()
            }
        }
        None if line_text.starts_with('[') && !line_text.ends_with(']') => "a section header is [name] (or [[name]] for a list of tables)".to_string(),
        None => "each line is `key = value` under a [section] header; strings in double quotes, lists in [ ]".to_string(),
    };
    msg.push_str(&format!("\nhint: {hint}; `ringgate config default` prints a complete, valid file to start from"));
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The tracer sees the whole configuration: every section, the keys
    /// nested in lists of tables, and the enum values.
    #[test]
    fn schema_covers_the_config() {
        let s = trace::<Config>().expect("Config must be traceable (see the module docs)");
        let Schema::Struct(top) = &s else { panic!("{s:?}") };
        let names: Vec<&str> = top.iter().map(|(n, _)| *n).collect();
        for want in ["server", "tls", "auth", "session", "store", "limits", "admin", "route", "web", "groups"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let server = &top.iter().find(|(n, _)| *n == "server").unwrap().1;
        let Schema::Struct(sf) = server else { panic!() };
        assert_eq!(sf.iter().find(|(n, _)| *n == "driver").unwrap().1, Schema::Enum(&["auto", "uring", "legacy"]));
        assert_eq!(sf.iter().find(|(n, _)| *n == "backlog").unwrap().1, Schema::Int { signed: false });
        // Every key `config default` prints is known to the schema.
        let mut dv: toml::Value = toml::from_str(Config::default_toml()).unwrap();
        let mut errs = Vec::new();
        walk(&mut dv, &s, "", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn every_problem_with_its_path() {
        let s = trace::<Config>().unwrap();
        let mut v: toml::Value = toml::from_str(
            "[server]\nlistne = \"x\"\ndriver = \"epoll\"\nbacklog = -1\nworkers = \"two\"\n[store]\nfsync = \"sometimes\"\n[nope]\n[[route.endpoints]]\nid = \"a\"\ntransport = \"tls\"\nport = 1\nbogus = 1\n[groups]\nteam = [\"a\", 3]\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        walk(&mut v, &s, "", &mut errs);
        let all = errs.join("\n");
        for want in [
            "unknown key server.listne (did you mean listen?)",
            "server.driver = \"epoll\" is not accepted; one of: \"auto\", \"uring\", \"legacy\"",
            "server.backlog = -1: must not be negative",
            "server.workers = \"two\": expected a whole number",
            "store.fsync = \"sometimes\" is not accepted; one of: \"always\", \"interval\", \"never\"",
            "unknown key nope; sections: [server]",
            "unknown key route.endpoints[0].bogus",
            "groups.team[1] = 3: expected a string",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // What is left deserializes.
        let c: Config = v.try_into().unwrap();
        assert_eq!(c.route.endpoints.len(), 1);
    }

    #[test]
    fn syntax_errors_have_line_and_hint() {
        for (text, line, hint) in [
            ("[server]\nworkers = 2\nlisten = 0.0.0.0:7443\n", "line 3", "listen = \"0.0.0.0:7443\""),
            ("[server]\nlisten = \"0.0.0.0:7443\n", "line 2", "closing double quote"),
            ("[server\n", "line 1", "[name]"),
        ] {
            let e = toml::from_str::<toml::Value>(text).unwrap_err();
            let m = syntax_error(text, &e);
            assert!(m.contains(line) && m.contains(hint), "{text:?}:\n{m}");
        }
    }
}
