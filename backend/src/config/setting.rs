//! The machinery behind the `settings!` table: how one key is read (environment over file over
//! default), checked, shown masked, and documented. A section declares each key once, with a
//! [`Kind`] that knows its type, default, bounds and whether it is a secret.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, Env};

/// What the TOML file must hold for a key; anything else is an "invalid type" error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    Integer,
    String,
    Boolean,
    /// An array, or (for the environment form) a comma-separated list.
    Array,
    /// A table of strings, or an array of tables: file only.
    Structured,
}

impl FileType {
    fn expected(self) -> &'static str {
        match self {
            FileType::Integer => "a whole number",
            FileType::String => "a string",
            FileType::Boolean => "true or false",
            FileType::Array => "an array",
            FileType::Structured => "a table",
        }
    }
}

fn toml_type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "a whole number",
        toml::Value::Float(_) => "a decimal number",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

type Parse<T> = Box<dyn Fn(&str) -> Result<T, String> + Send + Sync>;
type ParseFile<T> = Box<dyn Fn(&toml::Value) -> Result<T, String> + Send + Sync>;
type Show<T> = Box<dyn Fn(&T) -> String + Send + Sync>;

/// How one key is written, read, checked and shown.
pub struct Kind<T> {
    file_type: FileType,
    default: T,
    /// The default as the documentation shows it.
    default_doc: String,
    /// What values are accepted, for the documentation ("1 to 1000", "a cron schedule", …).
    accepts: String,
    secret: bool,
    parse: Parse<T>,
    parse_file: Option<ParseFile<T>>,
    show: Show<T>,
}

impl<T: Clone> Kind<T> {
    /// A kind of its own: its file type, default, how it is documented, parsed and shown.
    pub fn new(
        file_type: FileType,
        default: T,
        default_doc: impl Into<String>,
        accepts: impl Into<String>,
        parse: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static,
        show: impl Fn(&T) -> String + Send + Sync + 'static,
    ) -> Self {
        Kind {
            file_type,
            default,
            default_doc: default_doc.into(),
            accepts: accepts.into(),
            secret: false,
            parse: Box::new(parse),
            parse_file: None,
            show: Box::new(show),
        }
    }

    /// Reads the file's value with `parse` instead of as text (tables, arrays).
    pub fn file_parser(
        mut self,
        parse: impl Fn(&toml::Value) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        self.parse_file = Some(Box::new(parse));
        self
    }

    /// Replaces the documented default (for defaults derived from other keys).
    pub fn documented_default(mut self, text: &str) -> Self {
        self.default_doc = text.to_owned();
        self
    }

    /// Adds a check after parsing, whichever form the value came in.
    pub fn check(
        mut self,
        accepts: &str,
        check: impl Fn(&T) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self
    where
        T: 'static,
    {
        let check = std::sync::Arc::new(check);
        let parse = self.parse;
        let text_check = check.clone();
        self.parse = Box::new(move |text| {
            let value = parse(text)?;
            text_check(&value)?;
            Ok(value)
        });
        if let Some(parse_file) = self.parse_file {
            self.parse_file = Some(Box::new(move |value| {
                let parsed = parse_file(value)?;
                check(&parsed)?;
                Ok(parsed)
            }));
        }
        if !accepts.is_empty() {
            self.accepts = accepts.to_owned();
        }
        self
    }

    /// Marks the key a secret in the documentation (its `show` must mask it).
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    fn read_file_value(&self, value: &toml::Value) -> Result<T, String> {
        if let Some(parse_file) = &self.parse_file {
            return parse_file(value);
        }
        let text = match (self.file_type, value) {
            (FileType::Integer, toml::Value::Integer(n)) => n.to_string(),
            (FileType::String, toml::Value::String(s)) => s.clone(),
            (FileType::Boolean, toml::Value::Boolean(b)) => b.to_string(),
            (expected, got) => {
                return Err(format!(
                    "invalid type: expected {}, got {}",
                    expected.expected(),
                    toml_type_name(got)
                ));
            }
        };
        (self.parse)(&text)
    }
}

/// A key as the documentation table shows it.
#[derive(Debug, Clone)]
pub struct KeyDoc {
    /// The key as written in the file, e.g. `database.max_connections`.
    pub key: String,
    /// The environment variable, or `None` for keys only the file can set.
    pub env: Option<&'static str>,
    pub default: String,
    pub accepts: String,
    pub secret: bool,
    pub doc: String,
}

/// The key's full name: `section.key`, or `key` at the top level.
pub fn full_key(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_owned()
    } else {
        format!("{section}.{key}")
    }
}

/// An error naming the key and its environment variable.
pub fn key_error(section: &str, key: &str, env: Option<&str>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("{} ({})", full_key(section, key), env.unwrap_or("file only")),
        message: message.into(),
    }
}

/// Where values come from: the parsed file (named by `origin` in errors) and the environment.
pub struct Source<'a> {
    pub file: &'a toml::Table,
    pub origin: &'a Path,
    pub env: &'a dyn Env,
}

impl Source<'_> {
    fn table(&self, section: &str) -> Option<&toml::Table> {
        if section.is_empty() {
            Some(self.file)
        } else {
            self.file.get(section).and_then(toml::Value::as_table)
        }
    }

    /// Refuses keys the section does not declare (typos must not pass silently) and a section
    /// written as something other than a table.
    pub fn check_known(&self, section: &str, known: &[&str]) -> Result<(), ConfigError> {
        let file_error = |message: String| ConfigError {
            key: format!("config file {}", self.origin.display()),
            message,
        };
        if !section.is_empty()
            && let Some(value) = self.file.get(section)
            && !value.is_table()
        {
            return Err(file_error(format!("[{section}] must be a table")));
        }
        let Some(table) = self.table(section) else {
            return Ok(());
        };
        if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(file_error(format!(
                "unknown key `{}`; the keys here are {}",
                full_key(section, unknown),
                known.join(", ")
            )));
        }
        Ok(())
    }

    /// One key: the environment wins over the file, the file over the default.
    pub fn read<T: Clone>(
        &self,
        section: &str,
        key: &str,
        env: Option<&'static str>,
        kind: &Kind<T>,
    ) -> Result<T, ConfigError> {
        let fail = |message: String| key_error(section, key, env, message);
        if let Some(text) = env.and_then(|name| self.env.get(name)) {
            return (kind.parse)(&text).map_err(fail);
        }
        match self.table(section).and_then(|t| t.get(key)) {
            Some(value) => kind.read_file_value(value).map_err(fail),
            None => Ok(kind.default.clone()),
        }
    }
}

impl<T> Kind<T> {
    pub fn describe(&self, section: &str, key: &str, env: Option<&'static str>, doc: &str) -> KeyDoc {
        KeyDoc {
            key: full_key(section, key),
            env,
            default: self.default_doc.clone(),
            accepts: self.accepts.clone(),
            secret: self.secret,
            doc: doc.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// `key = value` as `check-config` prints it, secrets masked.
    pub fn line(&self, key: &str, value: &T) -> String {
        format!("{key} = {}\n", (self.show)(value))
    }
}

/// Declares a configuration section once: the typed struct, how each key is read from the file
/// and the environment, its documentation row and its masked `check-config` lines all come
/// from this one table. A key without `env` can only be set in the file.
macro_rules! settings {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident in $path:literal {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $kind:expr $(, env $env:literal)? ;
            )*
        }
        $(sections { $($sfield:ident : $sty:ty),* $(,)? })?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $( $( pub $sfield: $sty, )* )?
        }

        impl $name {
            /// The section's name in the file (`""`: the top level).
            pub const SECTION: &'static str = $path;

            /// Reads every key of the section; errors name the key and its variable.
            pub fn read(
                source: &$crate::config::setting::Source<'_>,
            ) -> Result<Self, $crate::config::ConfigError> {
                source.check_known(
                    $path,
                    &[$(stringify!($field),)* $($(<$sty>::SECTION,)*)?],
                )?;
                Ok(Self {
                    $( $field: source.read(
                        $path,
                        stringify!($field),
                        $crate::config::setting::env_name!($($env)?),
                        &$kind,
                    )?, )*
                    $( $( $sfield: <$sty>::read(source)?, )* )?
                })
            }

            /// An error about one of this section's keys, naming it and its variable.
            #[allow(dead_code)]
            pub fn key_error(key: &str, message: impl Into<String>) -> $crate::config::ConfigError {
                let env: Option<&'static str> = match key {
                    $( stringify!($field) => $crate::config::setting::env_name!($($env)?), )*
                    _ => None,
                };
                $crate::config::setting::key_error($path, key, env, message)
            }

            /// Every key of the section (and its subsections) for the documentation.
            pub fn describe() -> Vec<$crate::config::setting::KeyDoc> {
                #[allow(unused_mut)]
                let mut keys = vec![$(
                    $crate::config::setting::Kind::<$ty>::describe(
                        &$kind,
                        $path,
                        stringify!($field),
                        $crate::config::setting::env_name!($($env)?),
                        concat!($($doc, " ",)*),
                    ),
                )*];
                $( $( keys.extend(<$sty>::describe()); )* )?
                keys
            }

            /// The section as TOML, secrets masked: what `check-config` prints.
            pub fn write_masked(&self, out: &mut String) {
                if !$path.is_empty() {
                    out.push_str(concat!("\n[", $path, "]\n"));
                }
                $( out.push_str(&$kind.line(stringify!($field), &self.$field)); )*
                $( $( self.$sfield.write_masked(out); )* )?
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut masked = String::new();
                self.write_masked(&mut masked);
                f.write_str(&masked)
            }
        }
    };
}
pub(crate) use settings;

/// `Some("VAR")` for a key with an environment variable, `None` for a file-only key.
macro_rules! env_name {
    () => {
        None
    };
    ($env:literal) => {
        Some($env)
    };
}
pub(crate) use env_name;

// ---- Kinds -------------------------------------------------------------------------------

fn whole_number(text: &str, range: &RangeInclusive<u64>) -> Result<u64, String> {
    let value = text
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a whole number, got {text:?}"))?;
    if !range.contains(&value) {
        return Err(format!(
            "expected a number from {} to {}, got {value}",
            range.start(),
            range.end()
        ));
    }
    Ok(value)
}

fn range_doc(range: &RangeInclusive<u64>) -> String {
    format!("{} to {}", range.start(), range.end())
}

/// A whole number within `range`.
pub fn count<T>(default: u64, range: RangeInclusive<u64>) -> Kind<T>
where
    T: TryFrom<u64> + Clone + Display + 'static,
{
    let accepts = range_doc(&range);
    let value = T::try_from(default).ok().unwrap_or_else(unreachable_default);
    Kind::new(
        FileType::Integer,
        value,
        default.to_string(),
        accepts,
        move |text| {
            let n = whole_number(text, &range)?;
            T::try_from(n).map_err(|_| format!("{n} is too large"))
        },
        |v| v.to_string(),
    )
}

/// Defaults are written in the table next to their bounds; one that does not fit its type is a
/// programming error caught by the configuration tests, never by an operator.
#[allow(clippy::panic)]
fn unreachable_default<T>() -> T {
    panic!("a configuration default does not fit its type")
}

/// A whole number within `range`, where 0 (the default) means "no limit".
pub fn limit<T>(range: RangeInclusive<u64>) -> Kind<Option<T>>
where
    T: TryFrom<u64> + Clone + Display + 'static,
{
    let accepts = format!("0 (no limit) or {}", range_doc(&range));
    Kind::new(
        FileType::Integer,
        None,
        "`0` (no limit)",
        accepts,
        move |text| {
            let n = whole_number(text, &(0..=*range.end()))?;
            if n == 0 {
                return Ok(None);
            }
            whole_number(text, &range)?;
            T::try_from(n).map(Some).map_err(|_| format!("{n} is too large"))
        },
        |v| v.as_ref().map_or("0".into(), |n| n.to_string()),
    )
}

/// A whole number that, unset, is derived from other keys (documented in `default_doc`).
pub fn derived_count<T>(range: RangeInclusive<u64>, default_doc: &str) -> Kind<Option<T>>
where
    T: TryFrom<u64> + Clone + Display + 'static,
{
    let accepts = range_doc(&range);
    Kind::new(
        FileType::Integer,
        None,
        default_doc,
        accepts,
        move |text| {
            let n = whole_number(text, &range)?;
            T::try_from(n).map(Some).map_err(|_| format!("{n} is too large"))
        },
        |v| v.as_ref().map_or("\"\" # derived".into(), |n| n.to_string()),
    )
}

fn duration(unit_secs: u64, unit: &'static str, default: u64, range: RangeInclusive<u64>) -> Kind<Duration> {
    let accepts = format!("{} ({unit})", range_doc(&range));
    Kind::new(
        FileType::Integer,
        Duration::from_secs(default * unit_secs),
        default.to_string(),
        accepts,
        move |text| whole_number(text, &range).map(|n| Duration::from_secs(n * unit_secs)),
        move |d| (d.as_secs() / unit_secs).to_string(),
    )
}

/// A duration written in seconds.
pub fn secs(default: u64, range: RangeInclusive<u64>) -> Kind<Duration> {
    duration(1, "seconds", default, range)
}

/// A duration written in hours.
pub fn hours(default: u64, range: RangeInclusive<u64>) -> Kind<Duration> {
    duration(3600, "hours", default, range)
}

/// A duration written in days.
pub fn days(default: u64, range: RangeInclusive<u64>) -> Kind<Duration> {
    duration(86_400, "days", default, range)
}

/// A duration written in milliseconds.
pub fn millis(default: u64, range: RangeInclusive<u64>) -> Kind<Duration> {
    let accepts = format!("{} (milliseconds)", range_doc(&range));
    Kind::new(
        FileType::Integer,
        Duration::from_millis(default),
        default.to_string(),
        accepts,
        move |text| whole_number(text, &range).map(Duration::from_millis),
        |d| d.as_millis().to_string(),
    )
}

fn parse_flag(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected true or false, got {other:?}")),
    }
}

/// `true` or `false`.
pub fn flag(default: bool) -> Kind<bool> {
    Kind::new(
        FileType::Boolean,
        default,
        default.to_string(),
        "true or false",
        parse_flag,
        |v| v.to_string(),
    )
}

/// `true` or `false`, or unset to derive it from other keys (documented in `default_doc`).
pub fn derived_flag(default_doc: &str) -> Kind<Option<bool>> {
    Kind::new(
        FileType::Boolean,
        None,
        default_doc,
        "true or false",
        |text| parse_flag(text).map(Some),
        |v| v.map_or("\"\" # derived".into(), |b| b.to_string()),
    )
}

/// Free text with a default.
pub fn text(default: &str) -> Kind<String> {
    Kind::new(
        FileType::String,
        default.to_owned(),
        default,
        "text",
        |text| Ok(text.to_owned()),
        |v| format!("{v:?}"),
    )
}

/// Free text, unset by default; an empty value counts as unset.
pub fn optional_text() -> Kind<Option<String>> {
    Kind::new(
        FileType::String,
        None,
        "none",
        "text",
        |text| Ok(Some(text.to_owned()).filter(|t| !t.is_empty())),
        |v| format!("{:?}", v.as_deref().unwrap_or("")),
    )
}

/// A value parsed from text (an address, a URL, a time zone …), shown with `Display`.
pub fn parsed<T>(default: &str, accepts: &str, parse: fn(&str) -> Result<T, String>) -> Kind<T>
where
    T: Clone + Display + 'static,
{
    let value = parse(default).ok().unwrap_or_else(unreachable_default);
    Kind::new(FileType::String, value, default, accepts, parse, |v| {
        format!("{:?}", v.to_string())
    })
}

/// A secret: never printed, never echoed in an error. Unset (and empty) is `None`.
pub fn secret(min_chars: usize) -> Kind<Option<SecretString>> {
    let accepts = if min_chars > 1 {
        format!("{min_chars} characters or more")
    } else {
        "text".to_owned()
    };
    parsed_secret(&accepts, move |text| {
        if text.chars().count() < min_chars {
            return Err(format!("must be at least {min_chars} characters"));
        }
        Ok(SecretString::from(text.to_owned()))
    })
}

/// A secret parsed into a value (a key, a URL), shown masked; empty counts as unset.
pub fn parsed_secret<T>(
    accepts: &str,
    parse: impl Fn(&str) -> Result<T, String> + Send + Sync + 'static,
) -> Kind<Option<T>>
where
    T: Clone + 'static,
{
    Kind::new(
        FileType::String,
        None,
        "none",
        accepts,
        move |text| {
            if text.is_empty() {
                return Ok(None);
            }
            parse(text).map(Some)
        },
        |v| masked(v.is_some()),
    )
    .secret()
}

/// `"********"` for a set secret, an empty string marked unset otherwise.
pub fn masked(set: bool) -> String {
    if set {
        "\"********\"".into()
    } else {
        "\"\" # unset".into()
    }
}

/// A list: an array in the file, comma-separated in the environment; blanks dropped.
pub fn list<T>(
    accepts: &str,
    parse_item: fn(&str) -> Result<T, String>,
    show_item: fn(&T) -> String,
) -> Kind<Vec<T>>
where
    T: Clone + 'static,
{
    let parse_all = move |items: Vec<String>| -> Result<Vec<T>, String> {
        items
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(parse_item)
            .collect()
    };
    let mut kind = Kind::new(
        FileType::Array,
        Vec::new(),
        "none",
        accepts,
        move |text| parse_all(text.split(',').map(str::to_owned).collect()),
        move |v: &Vec<T>| format!("[{}]", v.iter().map(show_item).collect::<Vec<_>>().join(", ")),
    );
    kind.parse_file = Some(Box::new(move |value| match value {
        toml::Value::Array(items) => parse_all(
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or("each entry must be a string"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        // A single comma-separated string is accepted as in the environment.
        toml::Value::String(text) => parse_all(text.split(',').map(str::to_owned).collect()),
        other => Err(format!(
            "invalid type: expected an array of strings, got {}",
            toml_type_name(other)
        )),
    }));
    kind
}

/// A comma-separated list kept as written (`"a@x.com, b@x.com"`), each item checked.
pub fn comma_list(
    default: &str,
    accepts: &str,
    check_item: fn(&str) -> Result<(), String>,
) -> Kind<Vec<String>> {
    let parse = move |text: &str| -> Result<Vec<String>, String> {
        let items: Vec<String> = text
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        for item in &items {
            check_item(item)?;
        }
        Ok(items)
    };
    let value = parse(default).ok().unwrap_or_else(unreachable_default);
    Kind::new(
        FileType::String,
        value,
        if default.is_empty() { "none" } else { default },
        accepts,
        parse,
        |v| format!("{:?}", v.join(", ")),
    )
}

/// A file-only table of strings (`[section.key]` with `name = "value"` lines).
pub fn string_table(accepts: &str) -> Kind<BTreeMap<String, String>> {
    let mut kind = Kind::new(
        FileType::Structured,
        BTreeMap::new(),
        "none",
        accepts,
        |_| Err("can only be set in the config file".into()),
        |v: &BTreeMap<String, String>| {
            let entries: Vec<String> = v.iter().map(|(k, v)| format!("{k:?} = {v:?}")).collect();
            format!("{{ {} }}", entries.join(", "))
        },
    );
    kind.parse_file = Some(Box::new(|value| match value {
        toml::Value::Table(table) => table
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_owned()))
                    .ok_or_else(|| format!("{k}: invalid type: expected a string, got {}", toml_type_name(v)))
            })
            .collect(),
        other => Err(format!(
            "invalid type: expected a table, got {}",
            toml_type_name(other)
        )),
    }));
    kind
}

/// Deserializes a secret in an array-of-tables entry (`#[serde(deserialize_with)]`).
pub fn secret_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(SecretString::from)
}

/// Like `secret_text`, for an optional secret; empty counts as absent.
pub fn optional_secret_text<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    Ok(<Option<String> as serde::Deserialize>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(SecretString::from))
}

/// A file-only array of tables, deserialized into `T` and shown by `show`.
pub fn table_array<T>(accepts: &str, show: fn(&[T]) -> String) -> Kind<Vec<T>>
where
    T: Clone + serde::de::DeserializeOwned + 'static,
{
    let mut kind = Kind::new(
        FileType::Structured,
        Vec::new(),
        "none",
        accepts,
        |_| Err("can only be set in the config file".into()),
        move |v: &Vec<T>| show(v),
    );
    kind.parse_file = Some(Box::new(|value| match value {
        toml::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.clone()
                    .try_into::<T>()
                    .map_err(|e| format!("entry {}: {}", i + 1, e.message()))
            })
            .collect(),
        other => Err(format!(
            "invalid type: expected an array of tables, got {}",
            toml_type_name(other)
        )),
    }));
    kind
}
