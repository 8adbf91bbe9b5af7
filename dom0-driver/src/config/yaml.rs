//! The one place that reads YAML.
//!
//! We parse the event stream of `saphyr-parser` into a small tree that keeps every node's line and
//! column, because every config error must say where it is, and we resolve plain scalars by
//! YAML 1.1 rules (what backup.py's PyYAML does): `yes`/`no`/`on`/`off` are booleans, dates are
//! dates. A quoted scalar is always a string. Duplicate keys are kept, so the config checker can
//! report them instead of silently keeping the last one.

use saphyr_parser::{Event, Parser, ScalarStyle, Span};
use std::collections::HashMap;
use std::fmt;

/// A position in the source text, 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

impl From<Span> for Pos {
    fn from(span: Span) -> Self {
        Pos {
            line: span.start.line(),
            column: span.start.col() + 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(String),
    Float(String),
    /// An unquoted date or timestamp (YAML 1.1 `!!timestamp`), kept as written.
    Date(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    /// What this node is, in words, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "nothing (an empty value)".into(),
            Value::Bool(b) => format!("the boolean {}", if *b { "true" } else { "false" }),
            Value::Int(s) => format!("the number {s}"),
            Value::Float(s) => format!("the number {s}"),
            Value::Date(s) => format!("the date {s}"),
            Value::Str(s) => format!("the text {}", quote(s)),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Quotes user text for a message, escaping anything unprintable.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars().take(200) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if s.chars().count() > 200 {
        out.push('…');
    }
    out.push('"');
    out
}

#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty file or more than one document is an error.
pub fn parse(text: &str) -> Result<Node, YamlError> {
    let mut builder = Builder {
        events: Parser::new_from_str(text),
        anchors: HashMap::new(),
        depth: 0,
        expanded: Size::default(),
    };
    builder.document()
}

/// Deepest nesting we accept; a config is a few levels deep, this only stops pathological input.
const MAX_DEPTH: usize = 64;

/// Most nodes that aliases (`*name`) may add to the tree, all aliases together. Without a bound,
/// a kilobyte of nested aliases (a "billion laughs") expands to gigabytes; the tree a config needs
/// has a few hundred nodes, and a real config has no aliases at all.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// Most bytes of scalar text that aliases may add to the tree, all aliases together (one long
/// anchored string repeated by many aliases is a bomb too).
pub const MAX_ALIAS_BYTES: usize = 4 << 20;

/// How much a subtree materialises: its nodes and the bytes of its scalars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Size {
    nodes: usize,
    bytes: usize,
}

impl Size {
    fn of(node: &Node) -> Size {
        let mut size = Size { nodes: 1, bytes: 0 };
        match &node.value {
            Value::Null | Value::Bool(_) => {}
            Value::Int(s) | Value::Float(s) | Value::Date(s) | Value::Str(s) => {
                size.bytes = s.len()
            }
            Value::Seq(items) => {
                for n in items {
                    size = size.plus(Size::of(n));
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    size = size.plus(Size::of(k)).plus(Size::of(v));
                }
            }
        }
        size
    }

    fn plus(self, other: Size) -> Size {
        Size {
            nodes: self.nodes.saturating_add(other.nodes),
            bytes: self.bytes.saturating_add(other.bytes),
        }
    }
}

struct Builder<'a> {
    events: Parser<'a, saphyr_parser::StrInput<'a>>,
    /// Anchored nodes, with what one copy of each materialises.
    anchors: HashMap<usize, (Node, Size)>,
    depth: usize,
    /// What every alias so far has added to the tree; bounded by the `MAX_ALIAS_*` constants.
    expanded: Size,
}

enum Item {
    Node(Node),
    SeqEnd,
    MapEnd,
}

impl<'a> Builder<'a> {
    fn next(&mut self) -> Result<(Event<'a>, Span), YamlError> {
        match self.events.next() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => Err(YamlError {
                pos: Pos {
                    line: e.marker().line(),
                    column: e.marker().col() + 1,
                },
                message: explain_scan_error(e.info()),
            }),
            None => Err(YamlError {
                pos: Pos::default(),
                message: "unexpected end of the YAML text".into(),
            }),
        }
    }

    fn document(&mut self) -> Result<Node, YamlError> {
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::Nothing => continue,
                Event::StreamEnd => {
                    return Err(YamlError {
                        pos: span.into(),
                        message: "the file is empty".into(),
                    })
                }
                Event::DocumentStart(_) => break,
                other => {
                    return Err(YamlError {
                        pos: span.into(),
                        message: format!("unexpected YAML structure ({})", event_name(&other)),
                    })
                }
            }
        }
        let root = match self.item()? {
            Item::Node(n) => n,
            _ => unreachable_structure(),
        };
        // After the document: DocumentEnd, then StreamEnd; a second document is refused.
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::DocumentEnd | Event::Nothing => continue,
                Event::StreamEnd => return Ok(root),
                _ => {
                    return Err(YamlError {
                        pos: span.into(),
                        message: "the file holds more than one YAML document ('---'); a config is one document".into(),
                    })
                }
            }
        }
    }

    fn item(&mut self) -> Result<Item, YamlError> {
        let (ev, span) = self.next()?;
        let pos: Pos = span.into();
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let value = match tag {
                    Some(tag) if tag.suffix == "str" => Value::Str(text.into_owned()),
                    Some(tag) => {
                        return Err(YamlError {
                            pos,
                            message: format!(
                                "the YAML tag '{}{}' is not supported here",
                                tag.handle, tag.suffix
                            ),
                        })
                    }
                    None if style == ScalarStyle::Plain => resolve_plain(&text),
                    None => Value::Str(text.into_owned()),
                };
                let node = Node { value, pos };
                self.remember(anchor, &node);
                Ok(Item::Node(node))
            }
            Event::SequenceStart(anchor, _) => self.nested(pos, anchor, |b| {
                let mut items = Vec::new();
                loop {
                    match b.item()? {
                        Item::Node(n) => items.push(n),
                        Item::SeqEnd => break,
                        Item::MapEnd => unreachable_structure(),
                    }
                }
                Ok(Value::Seq(items))
            }),
            Event::MappingStart(anchor, _) => self.nested(pos, anchor, |b| {
                let mut entries = Vec::new();
                loop {
                    let key = match b.item()? {
                        Item::Node(n) => n,
                        Item::MapEnd => break,
                        Item::SeqEnd => unreachable_structure(),
                    };
                    let value = match b.item()? {
                        Item::Node(n) => n,
                        _ => unreachable_structure(),
                    };
                    entries.push((key, value));
                }
                Ok(Value::Map(entries))
            }),
            Event::SequenceEnd => Ok(Item::SeqEnd),
            Event::MappingEnd => Ok(Item::MapEnd),
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((n, size)) => {
                    // Counted before the copy is made, so a bomb fails before it allocates.
                    let total = self.expanded.plus(*size);
                    if total.nodes > MAX_ALIAS_NODES || total.bytes > MAX_ALIAS_BYTES {
                        return Err(YamlError {
                            pos,
                            message: format!(
                                "the aliases ('*name') up to here would expand to more than {MAX_ALIAS_NODES} nodes or {} MiB of text; a config needs far fewer (write the values out instead)",
                                MAX_ALIAS_BYTES >> 20
                            ),
                        });
                    }
                    self.expanded = total;
                    Ok(Item::Node(Node {
                        value: n.value.clone(),
                        pos,
                    }))
                }
                None => Err(YamlError {
                    pos,
                    message: "this alias ('*name') refers to an anchor that is not defined".into(),
                }),
            },
            other => Err(YamlError {
                pos,
                message: format!("unexpected YAML structure ({})", event_name(&other)),
            }),
        }
    }

    /// A sequence or a mapping: one level deeper (bounded), its content read by `read`, then
    /// remembered under its anchor if it has one.
    fn nested(
        &mut self,
        pos: Pos,
        anchor: usize,
        read: impl FnOnce(&mut Self) -> Result<Value, YamlError>,
    ) -> Result<Item, YamlError> {
        self.enter(pos)?;
        let value = read(self)?;
        self.depth -= 1;
        let node = Node { value, pos };
        self.remember(anchor, &node);
        Ok(Item::Node(node))
    }

    fn enter(&mut self, pos: Pos) -> Result<(), YamlError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(YamlError {
                pos,
                message: format!("the YAML is nested more than {MAX_DEPTH} levels deep"),
            });
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        // saphyr numbers anchors from 1; 0 means "no anchor".
        if anchor != 0 {
            self.anchors.insert(anchor, (node.clone(), Size::of(node)));
        }
    }
}

/// The parser guarantees balanced events; this is only reached if that promise breaks.
/// What a YAML event is, in words, for the rare message about structure the reader cannot use.
fn event_name(e: &Event) -> &'static str {
    match e {
        Event::Nothing => "nothing",
        Event::StreamStart => "the start of the stream",
        Event::StreamEnd => "the end of the stream",
        Event::DocumentStart(_) => "a new document",
        Event::DocumentEnd => "the end of a document",
        Event::Alias(_) => "an alias",
        Event::Scalar(..) => "a scalar",
        Event::SequenceStart(..) => "a list",
        Event::SequenceEnd => "the end of a list",
        Event::MappingStart(..) => "a mapping",
        Event::MappingEnd => "the end of a mapping",
    }
}

fn unreachable_structure() -> ! {
    panic!("YAML parser produced unbalanced events")
}

/// Adds a hint to the parser's message where users commonly trip.
fn explain_scan_error(info: &str) -> String {
    if info.contains("`@'") || info.contains("'@'") || info.contains("reserved indicator") {
        format!(
            "{info} (a value that starts with '@', like a snapshot label, must be quoted: \"@backup-1\")"
        )
    } else {
        info.to_owned()
    }
}

/// YAML 1.1 resolution of an unquoted scalar (the PyYAML `safe_load` rules).
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    if is_yaml11_int(text) {
        return Value::Int(text.to_owned());
    }
    if is_yaml11_float(text) {
        return Value::Float(text.to_owned());
    }
    if is_yaml11_timestamp(text) {
        return Value::Date(text.to_owned());
    }
    Value::Str(text.to_owned())
}

fn is_yaml11_int(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if body.is_empty() {
        return false;
    }
    if let Some(hex) = body.strip_prefix("0x") {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit() || c == '_');
    }
    if let Some(bin) = body.strip_prefix("0b") {
        return !bin.is_empty() && bin.chars().all(|c| matches!(c, '0' | '1' | '_'));
    }
    if let Some(oct) = body.strip_prefix("0o") {
        return !oct.is_empty() && oct.chars().all(|c| c.is_ascii_digit() || c == '_');
    }
    let first = body.as_bytes()[0];
    if !first.is_ascii_digit() {
        return false;
    }
    // Sexagesimal (`1:20`) is an integer in YAML 1.1 too.
    if body.contains(':') {
        return body
            .split(':')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    }
    body.chars().all(|c| c.is_ascii_digit() || c == '_')
}

fn is_yaml11_float(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    if matches!(body, ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    if !mantissa.contains('.') {
        return false;
    }
    let digits_ok = mantissa
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
        && mantissa.chars().filter(|&c| c == '.').count() == 1
        && mantissa.chars().any(|c| c.is_ascii_digit());
    let exp_ok = match exponent {
        None => true,
        Some(e) => {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && e.chars().all(|c| c.is_ascii_digit())
        }
    };
    digits_ok && exp_ok
}

fn is_yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 8 {
        return false;
    }
    // YYYY-M(M)-D(D) optionally followed by a time part.
    let mut parts = s.splitn(2, ['T', 't', ' ']);
    let date = parts.next().unwrap_or("");
    let fields: Vec<&str> = date.split('-').collect();
    fields.len() == 3
        && fields[0].len() == 4
        && (1..=2).contains(&fields[1].len())
        && (1..=2).contains(&fields[2].len())
        && fields.iter().all(|f| f.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests;
