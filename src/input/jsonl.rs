//! JSON Lines: one object per line, the text in a field (`--field`, default `text`), or a
//! bare JSON string as the text. JSON strings carry newlines as `\n`, so a multi-line
//! document is one record. Blank lines are not records.

use std::fmt;
use std::io::{BufReader, Read};

use anyhow::{bail, Result};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{decode, place, read_chunk, Carried, InputOptions, Item};

/// A JSON object as read: keys in input order, each value's bytes exactly as they were,
/// so it can be written back equal to the input (numbers keep every digit).
#[derive(Debug, Clone, Default)]
pub struct JsonObject(pub Vec<(String, Box<RawValue>)>);

impl JsonObject {
    /// The value of `key` (the last one, as JSON parsers take it, if repeated).
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The keys, for messages.
    fn keys(&self) -> String {
        let keys: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        if keys.is_empty() {
            "none".into()
        } else {
            keys.join(", ")
        }
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = JsonObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    fields.push(entry);
                }
                Ok(JsonObject(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

/// Which field: a top-level key, or a JSON pointer (`/meta/body`) into nested objects.
#[derive(Debug, Clone)]
enum Field {
    Key(String),
    Pointer(String),
}

impl Field {
    fn new(name: &str) -> Self {
        if name.starts_with('/') {
            Self::Pointer(name.to_string())
        } else {
            Self::Key(name.to_string())
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Key(k) | Self::Pointer(k) => k,
        }
    }

    /// The field's value in `obj` (whose line is `line`, parsed again only for pointers).
    fn find(&self, obj: &JsonObject, line: &str) -> Result<Option<Value>> {
        Ok(match self {
            Self::Key(k) => match obj.get(k) {
                Some(raw) => Some(serde_json::from_str(raw.get())?),
                None => None,
            },
            Self::Pointer(p) => serde_json::from_str::<Value>(line)?.pointer(p).cloned(),
        })
    }
}

/// What a JSON value is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What one line gives: text, second text, id, the object.
type Parsed = (String, Option<String>, Option<String>, Carried);

/// JSON Lines records.
pub struct JsonLines {
    reader: BufReader<Box<dyn Read + Send>>,
    name: String,
    field: Field,
    id_field: Option<Field>,
    pair_field: Option<Field>,
    line: usize,
    number: usize,
    bytes: u64,
    done: bool,
}

impl JsonLines {
    /// Records of `reader`, called `name` in messages.
    pub fn new(reader: Box<dyn Read + Send>, name: &str, opts: &InputOptions) -> Result<Self> {
        if opts.null_data {
            bail!("--null-data splits plain lines; JSON Lines records already end at newlines");
        }
        Ok(Self {
            reader: BufReader::with_capacity(1 << 16, reader),
            name: name.to_string(),
            field: Field::new(opts.field.as_deref().unwrap_or("text")),
            id_field: opts.id_field.as_deref().map(Field::new),
            pair_field: opts.pair_field.as_deref().map(Field::new),
            line: 0,
            number: 0,
            bytes: 0,
            done: false,
        })
    }

    /// Text, second text, id and carried object of one line, or why it cannot be used.
    fn parse(&self, line: &str) -> Result<Parsed, String> {
        let trimmed = line.trim_start();
        if trimmed.starts_with('"') {
            let text: String =
                serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
            // Without a second text it cannot be run as a pair; without an id it is still
            // classified (the id only labels the answer).
            if let Some(f) = self.pair_field.as_ref() {
                return Err(format!(
                    "is a JSON string, so it has no field \"{}\"",
                    f.name()
                ));
            }
            return Ok((text, None, None, Carried::None));
        }
        if !trimmed.starts_with('{') {
            return Err(match serde_json::from_str::<Value>(line) {
                Ok(v) => format!("is {}, not a JSON object or string", kind(&v)),
                Err(e) => format!("not valid JSON: {e}"),
            });
        }
        let obj: JsonObject =
            serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
        let pick = |field: &Field, what: &str| -> Result<String, String> {
            match field.find(&obj, line) {
                Err(e) => Err(format!("not valid JSON: {e}")),
                Ok(None) => Err(format!(
                    "has no field \"{}\" (fields: {}); pick the {what} with --{}",
                    field.name(),
                    obj.keys(),
                    match what {
                        "text" => "field",
                        "second text" => "pair-field",
                        _ => "id-field",
                    }
                )),
                Ok(Some(Value::String(s))) => Ok(s),
                Ok(Some(v)) if what == "id" && !v.is_null() => Ok(v.to_string()),
                Ok(Some(v)) => Err(format!(
                    "field \"{}\" is {}, not a string",
                    field.name(),
                    kind(&v)
                )),
            }
        };
        let text = pick(&self.field, "text")?;
        let pair = self
            .pair_field
            .as_ref()
            .map(|f| pick(f, "second text"))
            .transpose()?;
        // A record without its id (absent or null) is classified all the same, its id
        // left empty: the id labels the answer, it is not an input of the model.
        let id = match self.id_field.as_ref().map(|f| f.find(&obj, line)) {
            None | Some(Ok(None | Some(Value::Null))) => None,
            Some(Ok(Some(Value::String(s)))) => Some(s),
            Some(Ok(Some(v))) => Some(v.to_string()),
            Some(Err(e)) => return Err(format!("not valid JSON: {e}")),
        };
        Ok((text, pair, id, Carried::Json(obj)))
    }
}

impl Iterator for JsonLines {
    type Item = Result<Item>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut buf = Vec::new();
        loop {
            if self.done {
                return None;
            }
            let next = self.line + 1;
            let n = match read_chunk(&mut self.reader, b'\n', &mut buf, &self.name, "line", next) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e));
                }
                None => {
                    self.done = true;
                    return None;
                }
            };
            self.line += 1;
            self.bytes += n as u64;
            if !buf.iter().all(u8::is_ascii_whitespace) {
                break;
            }
        }
        self.number += 1;
        let (number, line) = (self.number, self.line);
        let at = || place(&self.name, number, line);
        let mut item = Item {
            number,
            end_byte: self.bytes,
            ..Item::default()
        };
        let raw = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // A byte-order mark before the first object is not part of it.
        let raw = match line {
            1 => raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw),
            _ => raw,
        };
        match decode(raw, at) {
            Err((text, e)) => {
                item.text = text;
                item.error = Some(e);
            }
            Ok(s) => match self.parse(&s) {
                Ok((text, pair, id, carried)) => {
                    item.text = text;
                    item.pair = pair;
                    item.id = id;
                    item.carried = carried;
                }
                Err(e) => {
                    item.error = Some(format!("{}: {e}", at()));
                    // The object still goes back out with the error, when it is one.
                    if let Ok(obj) = serde_json::from_str::<JsonObject>(&s) {
                        item.carried = Carried::Json(obj);
                    }
                }
            },
        }
        Some(Ok(item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(data: &'static str, field: Option<&str>, id: Option<&str>) -> Vec<Item> {
        let opts = InputOptions {
            format: super::super::InputFormat::Jsonl,
            field: field.map(String::from),
            id_field: id.map(String::from),
            ..InputOptions::default()
        };
        JsonLines::new(Box::new(data.as_bytes()), "in.jsonl", &opts)
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    #[test]
    fn objects_strings_pointers_and_ids() {
        let items = read(
            "\u{feff}{\"id\": 7, \"body\": \"two\\nlines \\u00e9\", \"n\": 1.50}\n\n\"just text\"\n{\"m\": {\"t\": \"deep\"}, \"body\": \"x\", \"id\": \"a\"}\n",
            Some("body"),
            None,
        );
        assert_eq!(items.len(), 3, "the blank line is not a record");
        assert_eq!(items[0].text, "two\nlines é");
        assert_eq!(items[1].text, "just text");
        assert_eq!(items[2].number, 3);
        let Carried::Json(obj) = &items[0].carried else {
            panic!("object carried")
        };
        assert_eq!(obj.get("n").unwrap().get(), "1.50", "value bytes kept");
        let deep = read(
            "{\"m\": {\"t\": \"deep\"}, \"id\": 12}",
            Some("/m/t"),
            Some("id"),
        );
        assert_eq!(deep[0].text, "deep");
        assert_eq!(deep[0].id.as_deref(), Some("12"));
    }

    #[test]
    fn bad_records_say_where_and_why() {
        let items = read(
            "{\"text\": \"ok\"}\n{\"body\": \"x\"}\nnot json\n{\"text\": 5}\n[1]\n{\"text\": \"fine\"}\n",
            None,
            None,
        );
        let errs: Vec<Option<&str>> = items.iter().map(|i| i.error.as_deref()).collect();
        assert!(errs[0].is_none() && errs[5].is_none());
        let e1 = errs[1].unwrap();
        assert!(
            e1.starts_with("in.jsonl line 2:") && e1.contains("no field \"text\" (fields: body)"),
            "{e1}"
        );
        assert!(errs[2].unwrap().contains("not valid JSON"), "{:?}", errs[2]);
        assert!(errs[3].unwrap().contains("is a number, not a string"));
        assert!(errs[4].unwrap().contains("is an array, not a JSON object"));
        assert!(matches!(items[1].carried, Carried::Json(_)));
    }
}
