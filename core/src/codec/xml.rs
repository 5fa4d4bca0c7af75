//! XML codec: documents to the [`Value`] tree and back, by one fixed
//! convention.
//!
//! # The convention
//!
//! XML has no types, so every leaf of a decoded tree is text: `<Qty>12</Qty>`
//! gives the text `"12"`, never a number. The shape of the tree follows
//! these rules.
//!
//! - **The root.** The decoded tree is an object with one key, the root
//!   element: `<a><b>x</b></a>` gives `{"a": {"b": "x"}}`.
//! - **Text-only elements.** An element with no attributes and no child
//!   elements becomes its text, possibly empty (`<b/>` and `<b></b>` give
//!   `""`). The text is kept exactly, without trimming: `<b> x </b>` gives
//!   `" x "`.
//! - **Other elements.** An element with attributes or child elements becomes
//!   an object, in document order: each attribute under `@name`, each child
//!   element under its name, and the element's own text under `#text`.
//!   `<Amount currency="XAF">1500</Amount>` gives
//!   `{"Amount": {"@currency": "XAF", "#text": "1500"}}`.
//! - **Whitespace between elements.** Whitespace-only text between child
//!   elements (indentation) is ignored, and so is whitespace-only text in an
//!   element that has attributes: `#text` is only present when the element
//!   has text that is not all whitespace. That text is kept exactly
//!   (`<p a="1"> x </p>` gives `{"@a": "1", "#text": " x "}`). Mixed content
//!   (`<p>one <b>two</b> three</p>`) keeps the text pieces that are not
//!   whitespace-only, concatenated, under one `#text` key placed where the
//!   first of them appeared: `{"#text": "one  three", "b": "two"}`.
//! - **Repeated elements.** Child elements with the same key become a list,
//!   in the position of the first one: `<r><i>1</i><i>2</i></r>` gives
//!   `{"r": {"i": ["1", "2"]}}`. A single element stays a single value:
//!   whether a key holds a list depends on the document, as XML does not
//!   say which elements may repeat.
//! - **Namespaces.** The codec's `namespaces` option lists (prefix, URI)
//!   pairs. An element or attribute whose namespace URI is one of them is
//!   keyed `prefix:local` with the *configured* prefix, whatever prefix the
//!   document used: with `cbc` bound to the UBL basic components URI,
//!   `<x:ID xmlns:x="urn:...:CommonBasicComponents-2">` is keyed `cbc:ID`. An
//!   element or attribute in any other namespace, including a document's
//!   default namespace, is keyed by its local name only. Unprefixed
//!   attributes are in no namespace (`@local`). The `xmlns` and `xmlns:*`
//!   declarations are not kept as attributes. A prefix that the document uses
//!   without declaring it is an error.
//! - **CDATA, comments, processing instructions.** A CDATA section is text
//!   like any other. Comments and processing instructions are dropped.
//! - **Entities.** Only the five predefined entities (`&amp;` `&lt;` `&gt;`
//!   `&apos;` `&quot;`) and character references (`&#233;`, `&#xE9;`) are
//!   resolved, in text and in attribute values. Entity expansion is never
//!   performed: a DOCTYPE that declares entities (`<!ENTITY`) is refused, so
//!   a "billion laughs" document fails at once with flat memory, and a
//!   reference to any other entity is an error naming it. A DOCTYPE without
//!   entity declarations is accepted and ignored; nothing external is ever
//!   fetched.
//! - **Character set.** A UTF-8 or UTF-16 byte-order mark, or else the
//!   `encoding` of the XML declaration (`ISO-8859-1`, `windows-1252`, ...),
//!   names the character set; without either the document is UTF-8.
//! - **Attribute values** are normalized as XML requires: a tab or line break
//!   written as such becomes a space; written as `&#9;` or `&#10;` it is kept.
//! - **Limits and errors.** Elements nest at most `max_depth` levels (see
//!   [`Limits`]). Every error names its line and column and says what was
//!   wrong and what was expected there: a malformed tag, an end tag that does
//!   not match its start tag (both are named), an element still open at the
//!   end of the document, text or a second element outside the root element,
//!   an empty document, an undeclared prefix, an unknown entity.
//!
//! Writing follows the same rules backwards, so a decoded tree is written
//! back to an equivalent document. In an object, a key `@name` is an
//! attribute (text, a number or a boolean), `#text` is the element's text,
//! and every other key is a child element; a list is the element repeated
//! once per item. Numbers are written with their exact text, `null` and an
//! empty object as an empty element. The namespaces of the options are
//! declared on the root element (`xmlns="..."` for the prefix `""`), and a
//! prefixed name must use one of them (or one declared by an `@xmlns:p`
//! attribute). With indentation, an element that has both text and child
//! elements is written on one line, because added whitespace would change
//! its text.
//!
//! Decoding then encoding can lose: comments, processing instructions, the
//! prefixes of unconfigured namespaces, and the order of text pieces within
//! mixed content.

use std::borrow::Cow;
use std::collections::HashMap;
use std::mem;

use quick_xml::XmlVersion;
use quick_xml::errors::{Error as XmlError, IllFormedError, SyntaxError};
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesDecl, BytesRef, BytesStart, BytesText, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::reader::NsReader;

use super::charset;
use super::{DecodeError, EncodeError, Format, Limits};
use crate::value::{Map, Str, Value};

/// Options of the XML codec.
#[derive(Clone, Debug, PartialEq)]
pub struct XmlOptions {
    /// Namespace prefixes (prefix, URI). Reading: an element or attribute in
    /// one of these namespaces is keyed `prefix:local`; in any other
    /// namespace, by its local name. Writing: declared on the root element;
    /// the prefix `""` declares the default namespace.
    pub namespaces: Vec<(String, String)>,
    /// Writing: the root element. When absent, the value must be an object
    /// with exactly one key, which names the root.
    pub root: Option<String>,
    /// Writing: start with `<?xml version="1.0" encoding="UTF-8"?>`.
    pub declaration: bool,
    /// Writing: spaces per nesting level; `None` writes everything on one line.
    pub indent: Option<usize>,
}

impl Default for XmlOptions {
    fn default() -> Self {
        XmlOptions {
            namespaces: Vec::new(),
            root: None,
            declaration: true,
            indent: Some(2),
        }
    }
}

/// The key of an element's own text in its object.
const TEXT_KEY: &str = "#text";

/// Above this many keys, an element's keys are also looked up in a hash map:
/// a scan is fastest for the small elements of business messages, but would
/// make an element with a hundred thousand differently named children
/// quadratic.
const SCAN_LIMIT: usize = 32;

const PREDEFINED_ENTITIES: &str = "only &amp; &lt; &gt; &apos; &quot; and character references \
    such as &#233; are allowed; entity expansion is never performed";

/// Decodes an XML document into the tree described in the module
/// documentation.
pub fn decode(input: &[u8], options: &XmlOptions, limits: &Limits) -> Result<Value, DecodeError> {
    if input.len() > limits.max_bytes {
        return Err(DecodeError::new(
            Format::Xml,
            None,
            format!(
                "document is {} bytes, over the limit of {} bytes",
                input.len(),
                limits.max_bytes
            ),
        ));
    }
    let charset = charset::sniff_xml(input)?;
    let text = charset::to_utf8(input, charset, Format::Xml)?;
    Decoder::new(&text, options, limits).document()
}

/// An element being read.
#[derive(Default)]
struct Frame<'i> {
    key: Cow<'i, str>,
    /// Offset of the `<` of the start tag.
    start: usize,
    /// Attributes and children so far, in document order.
    entries: Vec<(Str, Value)>,
    /// Positions in `entries` by key, kept once there are more than
    /// [`SCAN_LIMIT`] entries.
    index: HashMap<Str, usize>,
    has_attributes: bool,
    has_children: bool,
    /// The text kept so far: every finished piece between child elements
    /// that is not whitespace-only, then the current piece.
    text: String,
    /// Where the current piece (since the last child element) starts in `text`.
    piece_start: usize,
    /// The current piece is whitespace-only so far.
    piece_blank: bool,
    /// Whitespace that starts the current piece, not yet copied to `text`:
    /// indentation between child elements is never copied at all.
    pending: &'i str,
    /// Index in `entries` where `#text` goes: where its first piece appeared.
    text_at: Option<usize>,
}

impl<'i> Frame<'i> {
    fn open(&mut self, key: Cow<'i, str>, start: usize) {
        self.key = key;
        self.start = start;
        self.entries.clear();
        self.index.clear();
        self.has_attributes = false;
        self.has_children = false;
        self.text.clear();
        self.piece_start = 0;
        self.piece_blank = true;
        self.pending = "";
        self.text_at = None;
    }

    fn find(&self, key: &str) -> Option<usize> {
        if self.entries.len() <= SCAN_LIMIT {
            self.entries.iter().position(|(k, _)| k == key)
        } else {
            self.index.get(key).copied()
        }
    }

    /// Appends an entry whose key is not in `entries` yet.
    fn push_entry(&mut self, key: Str, value: Value) {
        let n = self.entries.len();
        if n == SCAN_LIMIT {
            self.index.extend(
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i)),
            );
        }
        if n >= SCAN_LIMIT {
            self.index.insert(key.clone(), n);
        }
        self.entries.push((key, value));
    }

    fn add_child(&mut self, key: Cow<'_, str>, value: Value) {
        let Some(i) = self.find(&key) else {
            self.push_entry(Str::from(key.as_ref()), value);
            return;
        };
        // A single element is never a list, so a list here holds repetitions.
        let slot = &mut self.entries[i].1;
        match slot {
            Value::Array(items) => items.push(value),
            _ => {
                let first = mem::take(slot);
                *slot = Value::Array(vec![first, value]);
            }
        }
    }

    /// Adds character data that borrows from the document.
    fn push_borrowed(&mut self, piece: Cow<'i, str>) {
        if let Cow::Borrowed(s) = piece
            && self.piece_blank
            && self.pending.is_empty()
            && self.text.len() == self.piece_start
            && is_blank(s)
        {
            self.pending = s;
            return;
        }
        self.push_str(&piece);
    }

    fn push_str(&mut self, piece: &str) {
        if !self.pending.is_empty() {
            self.text.push_str(mem::take(&mut self.pending));
        }
        self.text.push_str(piece);
        self.piece_blank = self.piece_blank && is_blank(piece);
    }

    /// Closes the current piece of text: at a child element or at the end.
    fn end_piece(&mut self) {
        if self.piece_blank {
            self.text.truncate(self.piece_start);
            self.pending = "";
        } else if self.text_at.is_none() {
            self.text_at = Some(self.entries.len());
        }
        self.piece_start = self.text.len();
        self.piece_blank = true;
    }

    fn finish(&mut self) -> Value {
        if !self.has_attributes && !self.has_children {
            // `pending` is only set while `text` is empty.
            if !self.pending.is_empty() {
                return Value::String(Str::from(mem::take(&mut self.pending)));
            }
            return Value::String(Str::from(self.text.as_str()));
        }
        self.end_piece();
        if !self.text.is_empty() {
            let at = self.text_at.unwrap_or(self.entries.len());
            let text = Value::String(Str::from(self.text.as_str()));
            self.entries.insert(at, (Str::const_new(TEXT_KEY), text));
        }
        let mut map = Map::with_capacity(self.entries.len());
        for (key, value) in self.entries.drain(..) {
            map.push_unchecked(key, value);
        }
        Value::Object(map)
    }
}

struct Decoder<'i, 'o> {
    text: &'i str,
    reader: NsReader<&'i [u8]>,
    namespaces: &'o [(String, String)],
    max_depth: usize,
    version: XmlVersion,
    /// The open elements are `frames[..depth]`; the frames after them are
    /// kept so that their buffers are reused by the next elements.
    frames: Vec<Frame<'i>>,
    depth: usize,
    root: Option<(Str, Value)>,
    /// Offset where the event being handled starts.
    at: usize,
}

impl<'i, 'o> Decoder<'i, 'o> {
    fn new(text: &'i str, options: &'o XmlOptions, limits: &Limits) -> Self {
        let mut reader = NsReader::from_str(text);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.trim_text(false);
        config.expand_empty_elements = false;
        Decoder {
            text,
            reader,
            namespaces: &options.namespaces,
            max_depth: limits.max_depth,
            version: XmlVersion::Implicit1_0,
            frames: Vec::with_capacity(limits.max_depth.min(16)),
            depth: 0,
            root: None,
            at: 0,
        }
    }

    fn document(mut self) -> Result<Value, DecodeError> {
        loop {
            self.at = offset(self.reader.buffer_position());
            let event = match self.reader.read_event() {
                Ok(event) => event,
                Err(e) => return Err(self.reader_error(e)),
            };
            match event {
                Event::Start(e) => self.start(&e, false)?,
                Event::Empty(e) => self.start(&e, true)?,
                Event::End(_) => self.end(),
                Event::Text(t) => self.text(&t)?,
                Event::CData(c) => {
                    if self.depth == 0 {
                        return Err(self.error("a CDATA section outside the root element"));
                    }
                    let text = c.xml_content(self.version);
                    self.frames[self.depth - 1].push_borrowed(text);
                }
                Event::GeneralRef(r) => self.reference(&r)?,
                Event::DocType(d) => self.doctype(&d)?,
                Event::Decl(d) => self.declaration(&d)?,
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => return self.eof(),
            }
        }
    }

    fn start(&mut self, e: &BytesStart<'_>, empty: bool) -> Result<(), DecodeError> {
        let name = e.name();
        if !is_document_name(name.0) {
            let message = if name.0.is_empty() {
                "expected an element name after '<'".to_owned()
            } else {
                format!("\"{}\" is not a valid element name", name.0)
            };
            return Err(self.error_at(self.at + 1, message));
        }
        if self.depth == 0
            && let Some((root, _)) = &self.root
        {
            return Err(self.error(format!(
                "a second root element <{}> after the root element <{root}>: a document has \
                     exactly one root element",
                name.0
            )));
        }
        if self.depth >= self.max_depth {
            return Err(self.error(format!(
                "elements are nested deeper than the limit of {} levels",
                self.max_depth
            )));
        }
        let key = self.element_key(name)?;
        if let Some(parent) = self.depth.checked_sub(1).map(|i| &mut self.frames[i]) {
            parent.end_piece();
            parent.has_children = true;
        }
        if self.frames.len() == self.depth {
            self.frames.push(Frame::default());
        }
        self.frames[self.depth].open(key, self.at);
        self.depth += 1;
        self.attributes(e)?;
        if empty {
            self.end();
        }
        Ok(())
    }

    fn element_key(&self, name: QName<'_>) -> Result<Cow<'i, str>, DecodeError> {
        let (ns, local) = self.reader.resolver().resolve_element(name);
        let local = local.into_inner();
        match ns {
            ResolveResult::Unknown(prefix) => Err(self.error_at(
                self.at + 1,
                format!(
                    "undeclared namespace prefix \"{prefix}\" in <{}>: expected a declaration \
                     xmlns:{prefix}=\"...\" on this element or an enclosing one",
                    name.0
                ),
            )),
            ResolveResult::Bound(ns) => match self.prefix_of(ns.0) {
                Some(prefix) if !prefix.is_empty() => Ok(Cow::Owned(format!("{prefix}:{local}"))),
                _ => Ok(self.borrow_input(local)),
            },
            ResolveResult::Unbound => Ok(self.borrow_input(local)),
        }
    }

    fn attributes(&mut self, e: &BytesStart<'_>) -> Result<(), DecodeError> {
        // Positions of attribute errors are relative to the tag's content,
        // which starts after the `<`.
        if is_blank(e.attributes_raw()) {
            return Ok(());
        }
        let tag_start = offset_in(self.text, e).unwrap_or(self.at + 1);
        for attr in e.attributes() {
            let attr = attr.map_err(|err| self.attribute_error(err, tag_start))?;
            let name = attr.key;
            if name.as_namespace_binding().is_some() {
                continue;
            }
            let name_at = offset_in(self.text, name.0).unwrap_or(tag_start);
            if !is_document_name(name.0) {
                return Err(self.error_at(
                    name_at,
                    format!("\"{}\" is not a valid attribute name", name.0),
                ));
            }
            let (ns, local) = self.reader.resolver().resolve_attribute(name);
            let local = local.into_inner();
            let key = match ns {
                ResolveResult::Unknown(prefix) => {
                    return Err(self.error_at(
                        name_at,
                        format!(
                            "undeclared namespace prefix \"{prefix}\" in the attribute {}: \
                             expected a declaration xmlns:{prefix}=\"...\" on this element or an \
                             enclosing one",
                            name.0
                        ),
                    ));
                }
                ResolveResult::Bound(ns) => match self.prefix_of(ns.0) {
                    Some(prefix) if !prefix.is_empty() => concat(&["@", prefix, ":", local]),
                    _ => concat(&["@", local]),
                },
                ResolveResult::Unbound => concat(&["@", local]),
            };
            let value = self.attribute_value(&attr.value)?.into_owned();
            let frame = &mut self.frames[self.depth - 1];
            if frame.find(&key).is_some() {
                let element = frame.key.clone();
                return Err(self.error_at(
                    name_at,
                    format!(
                        "the attribute {} of <{element}> has the same key \"{key}\" as another of \
                         its attributes (two names in namespaces that are not configured, or two \
                         prefixes for one namespace)",
                        name.0
                    ),
                ));
            }
            frame.push_entry(key, Value::String(Str::from(value)));
            frame.has_attributes = true;
        }
        Ok(())
    }

    /// Resolves references and normalizes whitespace, as XML requires of
    /// attribute values.
    fn attribute_value<'a>(&self, raw: &'a str) -> Result<Cow<'a, str>, DecodeError> {
        let bytes = raw.as_bytes();
        if !bytes
            .iter()
            .any(|b| matches!(b, b'&' | b'<' | b'\t' | b'\n' | b'\r'))
        {
            return Ok(Cow::Borrowed(raw));
        }
        let base = offset_in(self.text, raw).unwrap_or(self.at);
        let mut out = String::with_capacity(raw.len());
        let mut run = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\t' | b'\n' | b'\r' => {
                    out.push_str(&raw[run..i]);
                    out.push(' ');
                    // A CR LF line break is one space.
                    if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                    i += 1;
                    run = i;
                }
                b'<' => {
                    return Err(self.error_at(
                        base + i,
                        "'<' is not allowed in an attribute value: expected &lt;",
                    ));
                }
                b'&' => {
                    out.push_str(&raw[run..i]);
                    let name = raw[i + 1..]
                        .find(';')
                        .map(|len| &raw[i + 1..i + 1 + len])
                        .filter(|name| !name.is_empty());
                    let Some(name) = name else {
                        return Err(self.error_at(base + i, DANGLING_AMPERSAND));
                    };
                    match resolve_reference(name, self.version) {
                        Ok(Reference::Text(s)) => out.push_str(s),
                        Ok(Reference::Char(c)) => out.push(c),
                        Err(message) => return Err(self.error_at(base + i, message)),
                    }
                    i += name.len() + 2;
                    run = i;
                }
                _ => i += 1,
            }
        }
        out.push_str(&raw[run..]);
        Ok(Cow::Owned(out))
    }

    fn end(&mut self) {
        // The reader checks that end tags match start tags, so an end tag
        // always closes an open element.
        let Some(depth) = self.depth.checked_sub(1) else {
            return;
        };
        self.depth = depth;
        let frame = &mut self.frames[depth];
        let value = frame.finish();
        let key = mem::take(&mut frame.key);
        match depth.checked_sub(1) {
            Some(parent) => self.frames[parent].add_child(key, value),
            None => self.root = Some((Str::from(key.as_ref()), value)),
        }
    }

    fn text(&mut self, t: &BytesText<'i>) -> Result<(), DecodeError> {
        let text = t.xml_content(self.version);
        if self.depth > 0 {
            self.frames[self.depth - 1].push_borrowed(text);
            return Ok(());
        }
        if is_blank(&text) {
            return Ok(());
        }
        // Point at the first character that is not whitespace.
        let skip = text.len() - text.trim_start_matches(is_xml_space).len();
        let at = self.at + skip;
        let message = match &self.root {
            Some((root, _)) => format!(
                "text after the end of the root element <{root}>: expected the end of the document"
            ),
            None => "text before the root element: expected an XML element".to_owned(),
        };
        Err(self.error_at(at, message))
    }

    fn reference(&mut self, r: &BytesRef<'_>) -> Result<(), DecodeError> {
        if self.depth == 0 {
            return Err(self.error(format!(
                "an entity reference &{}; outside the root element",
                &**r
            )));
        }
        let resolved = resolve_reference(r, self.version).map_err(|message| self.error(message))?;
        let frame = &mut self.frames[self.depth - 1];
        match resolved {
            Reference::Text(s) => frame.push_str(s),
            Reference::Char(c) => frame.push_str(c.encode_utf8(&mut [0; 4])),
        }
        Ok(())
    }

    fn doctype(&self, d: &BytesText<'_>) -> Result<(), DecodeError> {
        if self.depth > 0 || self.root.is_some() {
            return Err(self.error("a DOCTYPE is only allowed before the root element"));
        }
        if let Some(i) = d.find("<!ENTITY") {
            let at = offset_in(self.text, d).map_or(self.at, |start| start + i);
            return Err(self.error_at(
                at,
                "entity declarations are not allowed (entity expansion is never performed)",
            ));
        }
        Ok(())
    }

    fn declaration(&mut self, d: &BytesDecl<'_>) -> Result<(), DecodeError> {
        if self.depth > 0 || self.root.is_some() {
            return Err(
                self.error("an XML declaration is only allowed at the start of the document")
            );
        }
        self.version = d.xml_version().map_err(|e| {
            let message = match e {
                XmlError::IllFormed(e) => ill_formed_message(e),
                other => other.to_string(),
            };
            self.error(message)
        })?;
        Ok(())
    }

    fn eof(mut self) -> Result<Value, DecodeError> {
        if let Some(frame) = self.depth.checked_sub(1).map(|i| &self.frames[i]) {
            let (line, column) = super::line_column(self.text, frame.start);
            return Err(self.error_at(
                self.text.len(),
                format!(
                    "unexpected end of document: element <{}> is not closed (opened at line \
                     {line}, column {column})",
                    frame.key
                ),
            ));
        }
        match self.root.take() {
            Some((key, value)) => {
                let mut map = Map::with_capacity(1);
                map.push_unchecked(key, value);
                Ok(Value::Object(map))
            }
            None => Err(self.error_at(self.text.len(), "empty document, expected an XML element")),
        }
    }

    /// The configured prefix of a namespace URI.
    fn prefix_of(&self, uri: &str) -> Option<&'o str> {
        self.namespaces
            .iter()
            .find(|(_, u)| u == uri)
            .map(|(p, _)| p.as_str())
    }

    /// Names come from the reader with a lifetime shorter than the document's,
    /// although they are slices of it; finding them in the document lets a
    /// repeated element's key be compared without being copied.
    fn borrow_input(&self, part: &str) -> Cow<'i, str> {
        offset_in(self.text, part)
            .and_then(|at| self.text.get(at..at + part.len()))
            .map_or_else(|| Cow::Owned(part.to_owned()), Cow::Borrowed)
    }

    fn reader_error(&self, err: XmlError) -> DecodeError {
        let reported = offset(self.reader.error_position());
        let (at, message) = match err {
            XmlError::Syntax(e) => (reported, syntax_message(e).to_owned()),
            XmlError::IllFormed(e) => (reported, ill_formed_message(e)),
            other => (self.at, other.to_string()),
        };
        self.error_at(at, message)
    }

    fn attribute_error(&self, err: AttrError, tag_start: usize) -> DecodeError {
        let (pos, message) = match err {
            AttrError::ExpectedEq(p) => (p, "expected '=' after the attribute name".to_owned()),
            AttrError::ExpectedValue(p) => {
                (p, "expected a quoted attribute value after '='".to_owned())
            }
            AttrError::UnquotedValue(p) => (
                p,
                "attribute value is not quoted: expected \"...\" or '...'".to_owned(),
            ),
            AttrError::ExpectedQuote(p, q) => (
                p,
                format!("attribute value is not closed: expected {}", q as char),
            ),
            AttrError::Duplicated(p, _) => {
                let name: String = self
                    .text
                    .get(tag_start + p..)
                    .unwrap_or_default()
                    .chars()
                    .take_while(|&c| c != '=' && !is_xml_space(c))
                    .collect();
                (p, format!("the attribute {name} appears twice"))
            }
        };
        self.error_at(tag_start + pos, message)
    }

    fn error(&self, message: impl Into<String>) -> DecodeError {
        self.error_at(self.at, message)
    }

    fn error_at(&self, at: usize, message: impl Into<String>) -> DecodeError {
        DecodeError::at_offset(Format::Xml, self.text, at, message)
    }
}

const DANGLING_AMPERSAND: &str =
    "'&' is not followed by an entity name and ';': write &amp; for a literal ampersand";

fn syntax_message(e: SyntaxError) -> &'static str {
    match e {
        SyntaxError::InvalidBangMarkup => {
            "unknown markup after '<!': expected a comment <!-- -->, a CDATA section <![CDATA[ \
             ]]> or a DOCTYPE"
        }
        SyntaxError::UnclosedPI => {
            "processing instruction is not closed: expected '?>' before the end of the document"
        }
        SyntaxError::UnclosedXmlDecl => {
            "XML declaration is not closed: expected '?>' before the end of the document"
        }
        SyntaxError::UnclosedComment => {
            "comment is not closed: expected '-->' before the end of the document"
        }
        SyntaxError::UnclosedDoctype => {
            "DOCTYPE is not closed: expected '>' before the end of the document"
        }
        SyntaxError::UnclosedCData => {
            "CDATA section is not closed: expected ']]>' before the end of the document"
        }
        SyntaxError::UnclosedTag => {
            "tag is not closed: expected '>' before the end of the document"
        }
        SyntaxError::UnclosedSingleQuotedAttributeValue => {
            "attribute value is not closed: expected ' before the end of the document"
        }
        SyntaxError::UnclosedDoubleQuotedAttributeValue => {
            "attribute value is not closed: expected \" before the end of the document"
        }
    }
}

fn ill_formed_message(e: IllFormedError) -> String {
    match e {
        IllFormedError::MissingDeclVersion(_) => {
            "the XML declaration must start with version=\"1.0\"".to_owned()
        }
        IllFormedError::UnknownVersion => "unknown XML version: expected 1.0 or 1.1".to_owned(),
        IllFormedError::MissingDoctypeName => {
            "the DOCTYPE has no document type name: expected <!DOCTYPE name ...>".to_owned()
        }
        IllFormedError::MissingEndTag(name) => format!("element <{name}> is not closed"),
        IllFormedError::UnmatchedEndTag(name) => {
            format!("end tag </{name}> does not close any open element")
        }
        IllFormedError::MismatchedEndTag { expected, found } => {
            format!(
                "mismatched end tag: expected </{expected}> to close <{expected}>, found </{found}>"
            )
        }
        IllFormedError::DoubleHyphenInComment => "'--' is not allowed inside a comment".to_owned(),
        IllFormedError::UnclosedReference => DANGLING_AMPERSAND.to_owned(),
    }
}

enum Reference {
    Text(&'static str),
    Char(char),
}

/// Resolves the name between `&` and `;`: a predefined entity or a
/// character reference, nothing else.
fn resolve_reference(name: &str, version: XmlVersion) -> Result<Reference, String> {
    let text = match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "apos" => "'",
        "quot" => "\"",
        _ => {
            let Some(number) = name.strip_prefix('#') else {
                return Err(format!("unknown entity &{name}; ({PREDEFINED_ENTITIES})"));
            };
            let (digits, radix) = match number.strip_prefix('x') {
                Some(hex) => (hex, 16),
                None => (number, 10),
            };
            // `from_str_radix` would also accept a sign.
            let well_formed =
                !digits.is_empty() && digits.bytes().all(|b| (b as char).is_digit(radix));
            if !well_formed {
                return Err(format!(
                    "invalid character reference &{name};: expected &#<decimal digits>; or \
                     &#x<hex digits>;"
                ));
            }
            return u32::from_str_radix(digits, radix)
                .ok()
                .and_then(char::from_u32)
                .filter(|&c| is_xml_char(c, version))
                .map(Reference::Char)
                .ok_or_else(|| {
                    format!("character reference &{name}; is not a character allowed in XML")
                });
        }
    };
    Ok(Reference::Text(text))
}

fn is_xml_char(c: char, version: XmlVersion) -> bool {
    match c {
        '\t'
        | '\n'
        | '\r'
        | '\u{20}'..='\u{D7FF}'
        | '\u{E000}'..='\u{FFFD}'
        | '\u{10000}'..='\u{10FFFF}' => true,
        // XML 1.1 allows the other control characters, as references only.
        '\u{1}'..='\u{1F}' => matches!(version, XmlVersion::Explicit1_1),
        _ => false,
    }
}

fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn is_blank(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A qualified name as documents may write it: an optional prefix and a
/// local name. Any non-ASCII character is accepted, as XML 1.0 (fifth
/// edition) accepts nearly all of them.
fn is_document_name(name: &str) -> bool {
    // Runs once per element and attribute: one pass over the bytes.
    let mut at_start = true;
    let mut prefixed = false;
    for &c in name.as_bytes() {
        if c == b':' {
            if at_start || prefixed {
                return false;
            }
            prefixed = true;
            at_start = true;
            continue;
        }
        let ok = if at_start {
            c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
        } else {
            c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.') || c >= 0x80
        };
        if !ok {
            return false;
        }
        at_start = false;
    }
    !at_start
}

/// Concatenates without the formatting machinery, on the path of every key.
fn concat(parts: &[&str]) -> Str {
    let mut s = Str::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        s.push_str(part);
    }
    s
}

/// Where `part` starts in `whole`, when it is a slice of it.
fn offset_in(whole: &str, part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start)
}

fn offset(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

/// Writes `value` as an XML document (UTF-8), by the convention described in
/// the module documentation.
pub fn encode(value: &Value, options: &XmlOptions) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer {
        // A typical business document fits without growing.
        out: Vec::with_capacity(4096),
        indent: options.indent,
        path: Vec::with_capacity(16),
        scope: Vec::with_capacity(options.namespaces.len() + 1),
    };
    let (name, content) = match &options.root {
        Some(name) => (name.as_str(), value),
        None => {
            let only = value
                .as_object()
                .filter(|map| map.len() == 1)
                .and_then(|map| map.iter().next());
            let Some((key, content)) = only else {
                return Err(w.error(format!(
                    "an XML document is written from an object with exactly one key, the root \
                     element, found {} (or name the root element in the codec's options)",
                    describe_root(value)
                )));
            };
            w.path.push(Segment::Key(key));
            (key, content)
        }
    };
    for (i, (prefix, uri)) in options.namespaces.iter().enumerate() {
        if !prefix.is_empty() && !is_ncname(prefix) {
            return Err(w.error(format!(
                "the namespace prefix \"{prefix}\" is not a valid XML name"
            )));
        }
        if uri.is_empty() {
            return Err(w.error(format!(
                "the namespace prefix \"{prefix}\" has an empty URI"
            )));
        }
        if options.namespaces[..i].iter().any(|(p, _)| p == prefix) {
            return Err(w.error(format!(
                "the namespace prefix \"{prefix}\" is declared twice"
            )));
        }
        if !prefix.is_empty() {
            w.scope.push(prefix);
        }
    }
    if let Value::Array(_) = content {
        return Err(w.error(format!(
            "the root element <{name}> cannot be a list: a document has exactly one root element"
        )));
    }
    if options.declaration {
        w.out
            .extend_from_slice(br#"<?xml version="1.0" encoding="UTF-8"?>"#);
        if options.indent.is_some() {
            w.out.push(b'\n');
        }
    }
    w.element(name, content, 0, false, &options.namespaces)?;
    Ok(w.out)
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

struct Writer<'a> {
    out: Vec<u8>,
    indent: Option<usize>,
    /// Where in the tree the value being written is, for errors.
    path: Vec<Segment<'a>>,
    /// Namespace prefixes declared on the element being written or around it.
    scope: Vec<&'a str>,
}

impl<'a> Writer<'a> {
    /// Writes one element; `value` is not a list. `inline` forbids added
    /// whitespace, inside mixed content.
    fn element(
        &mut self,
        name: &'a str,
        value: &'a Value,
        level: usize,
        inline: bool,
        declarations: &'a [(String, String)],
    ) -> Result<(), EncodeError> {
        let Some(prefixed) = name_prefixed(name) else {
            return Err(self.error(format!(
                "\"{name}\" is not a valid XML element name: expected letters, digits, '_', '-', \
                 '.' and an optional 'prefix:', not starting with a digit, '-' or '.'"
            )));
        };
        let scope_len = self.scope.len();
        self.out.push(b'<');
        self.out.extend_from_slice(name.as_bytes());
        for (prefix, uri) in declarations {
            if prefix.is_empty() {
                self.out.extend_from_slice(b" xmlns=\"");
            } else {
                self.out.extend_from_slice(b" xmlns:");
                self.out.extend_from_slice(prefix.as_bytes());
                self.out.extend_from_slice(b"=\"");
            }
            self.escaped(uri, true)?;
            self.out.push(b'"');
        }
        let result = match value {
            Value::Object(map) => self.object(name, prefixed, map, level, inline, declarations),
            Value::Array(_) => Err(self.error(
                "a list inside a list cannot be written as XML: each item of a list is one element"
                    .to_owned(),
            )),
            scalar => {
                if prefixed {
                    self.check_prefix(name, "element")?;
                }
                match scalar.scalar_text() {
                    Some(text) if !text.is_empty() => {
                        self.out.push(b'>');
                        self.escaped(&text, false)?;
                        self.end_tag(name);
                    }
                    _ => self.out.extend_from_slice(b"/>"),
                }
                Ok(())
            }
        };
        self.scope.truncate(scope_len);
        result
    }

    fn object(
        &mut self,
        name: &'a str,
        prefixed: bool,
        map: &'a Map,
        level: usize,
        inline: bool,
        declarations: &'a [(String, String)],
    ) -> Result<(), EncodeError> {
        let mut has_text = false;
        let mut has_children = false;
        let mut prefixed_attributes = false;
        for (key, value) in map.iter() {
            if let Some(attr) = key.strip_prefix('@') {
                self.path.push(Segment::Key(key));
                self.attribute(attr, value, declarations)?;
                self.path.pop();
                prefixed_attributes |= attr.contains(':');
            } else if key == TEXT_KEY {
                has_text |= match value {
                    Value::String(s) => !s.is_empty(),
                    Value::Null => false,
                    Value::Bool(_) | Value::Number(_) => true,
                    Value::Array(_) | Value::Object(_) => {
                        self.path.push(Segment::Key(key));
                        return Err(self.error(format!(
                            "#text must be text, a number or a boolean, found {}",
                            describe(value)
                        )));
                    }
                };
            } else {
                has_children |= !matches!(value, Value::Array(items) if items.is_empty());
            }
        }
        // Checked once every attribute is written, as an `@xmlns:p` attribute
        // declares `p` for the element itself.
        if prefixed {
            self.check_prefix(name, "element")?;
        }
        if prefixed_attributes {
            for key in map.keys() {
                if let Some(attr) = key.strip_prefix('@')
                    && !attr.starts_with("xmlns:")
                {
                    self.path.push(Segment::Key(key));
                    self.check_prefix(attr, "attribute")?;
                    self.path.pop();
                }
            }
        }
        if !has_text && !has_children {
            self.out.extend_from_slice(b"/>");
            return Ok(());
        }
        self.out.push(b'>');
        // Whitespace added around the children of an element with text
        // would become part of its text.
        let inline = inline || self.indent.is_none() || (has_text && has_children);
        for (key, value) in map.iter() {
            if key.starts_with('@') {
                continue;
            }
            self.path.push(Segment::Key(key));
            if key == TEXT_KEY {
                if let Some(text) = value.scalar_text() {
                    self.escaped(&text, false)?;
                }
            } else if let Value::Array(items) = value {
                for (i, item) in items.iter().enumerate() {
                    self.path.push(Segment::Index(i));
                    self.line(level + 1, inline);
                    self.element(key, item, level + 1, inline, &[])?;
                    self.path.pop();
                }
            } else {
                self.line(level + 1, inline);
                self.element(key, value, level + 1, inline, &[])?;
            }
            self.path.pop();
        }
        if has_children {
            self.line(level, inline);
        }
        self.end_tag(name);
        Ok(())
    }

    fn attribute(
        &mut self,
        name: &'a str,
        value: &Value,
        declarations: &[(String, String)],
    ) -> Result<(), EncodeError> {
        if name_prefixed(name).is_none() {
            return Err(self.error(format!(
                "\"@{name}\" is not a valid XML attribute name: expected '@' then letters, \
                 digits, '_', '-', '.' and an optional 'prefix:', not starting with a digit, '-' \
                 or '.'"
            )));
        }
        let Some(text) = value.scalar_text() else {
            return Err(self.error(format!(
                "an attribute must be text, a number or a boolean, found {}",
                describe(value)
            )));
        };
        let declared = if name == "xmlns" {
            Some("")
        } else {
            name.strip_prefix("xmlns:")
        };
        if let Some(prefix) = declared {
            if declarations.iter().any(|(p, _)| p == prefix) {
                return Err(self.error(format!(
                    "the namespace prefix \"{prefix}\" is declared both by the codec's options \
                     and by this attribute"
                )));
            }
            if !prefix.is_empty() {
                self.scope.push(prefix);
            }
        }
        self.out.push(b' ');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"=\"");
        self.escaped(&text, true)?;
        self.out.push(b'"');
        Ok(())
    }

    fn check_prefix(&self, name: &str, what: &str) -> Result<(), EncodeError> {
        let Some(colon) = name.bytes().position(|b| b == b':') else {
            return Ok(());
        };
        match Some((&name[..colon], ())) {
            Some((prefix, _))
                if prefix != "xml" && prefix != "xmlns" && !self.scope.contains(&prefix) =>
            {
                Err(self.error(format!(
                    "the namespace prefix \"{prefix}\" of the {what} name \"{name}\" is not \
                     declared: expected it among the codec's namespaces"
                )))
            }
            _ => Ok(()),
        }
    }

    fn end_tag(&mut self, name: &str) {
        self.out.extend_from_slice(b"</");
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'>');
    }

    /// Starts a new line at `level` when indenting.
    fn line(&mut self, level: usize, inline: bool) {
        if let (Some(n), false) = (self.indent, inline) {
            self.out.push(b'\n');
            self.out.resize(self.out.len() + n * level, b' ');
        }
    }

    /// Writes `text` escaped for element content or, with `attribute`, for a
    /// double-quoted attribute value. Line breaks and tabs in attributes, and
    /// carriage returns anywhere, are written as character references, as a
    /// reader would otherwise normalize them away.
    fn escaped(&mut self, text: &str, attribute: bool) -> Result<(), EncodeError> {
        let bytes = text.as_bytes();
        let mut run = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let replacement: &[u8] = match b {
                b'&' => b"&amp;",
                b'<' => b"&lt;",
                b'>' => b"&gt;",
                b'\r' => b"&#13;",
                b'"' if attribute => b"&quot;",
                b'\n' if attribute => b"&#10;",
                b'\t' if attribute => b"&#9;",
                b'\n' | b'\t' => continue,
                0..=0x1F => {
                    return Err(self.error(format!(
                        "the text contains the control character U+{b:04X}, which XML 1.0 cannot \
                         represent"
                    )));
                }
                // U+FFFE and U+FFFF (EF BF BE, EF BF BF) are not XML characters either.
                0xEF if matches!(bytes.get(i + 1..i + 3), Some([0xBF, 0xBE | 0xBF])) => {
                    let c = if bytes[i + 2] == 0xBE { "FFFE" } else { "FFFF" };
                    return Err(self.error(format!(
                        "the text contains the non-character U+{c}, which XML 1.0 cannot represent"
                    )));
                }
                _ => continue,
            };
            self.out.extend_from_slice(&bytes[run..i]);
            self.out.extend_from_slice(replacement);
            run = i + 1;
        }
        self.out.extend_from_slice(&bytes[run..]);
        Ok(())
    }

    fn error(&self, message: String) -> EncodeError {
        let mut path = String::new();
        for segment in &self.path {
            match segment {
                Segment::Key(key) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Segment::Index(i) => {
                    path.push('[');
                    path.push_str(&i.to_string());
                    path.push(']');
                }
            }
        }
        if path.is_empty() {
            path.push_str("(root)");
        }
        EncodeError {
            format: Format::Xml,
            path,
            message,
        }
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn describe_root(v: &Value) -> String {
    match v {
        Value::Object(map) => format!("an object with {} keys", map.len()),
        other => describe(other).to_owned(),
    }
}

/// Byte classes of plain ASCII names: bit 0, may start a name; bit 1, may
/// be in a name. Colons and non-ASCII bytes are 0 (the careful path).
static NAME_BYTES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphabetic() || c == b'_' {
            3
        } else if c.is_ascii_digit() || c == b'-' || c == b'.' {
            2
        } else {
            0
        };
        i += 1;
    }
    t
};

/// A name the writer accepts: an optional prefix and a local name, each of
/// letters, digits, `_`, `-` and `.`, not starting with a digit, `-` or `.`.
/// `None` when `name` is not one; otherwise whether it has a prefix.
fn name_prefixed(name: &str) -> Option<bool> {
    // Names are checked for every element written: plain ASCII names
    // without a prefix, by far the most common, with one table look-up per
    // byte.
    let b = name.as_bytes();
    if b.first().is_some_and(|&c| NAME_BYTES[c as usize] & 1 != 0)
        && b.iter().all(|&c| NAME_BYTES[c as usize] & 2 != 0)
    {
        return Some(false);
    }
    match name.split_once(':') {
        Some((prefix, local)) => (is_ncname(prefix) && is_ncname(local)).then_some(true),
        None => is_ncname(name).then_some(false),
    }
}

#[cfg(test)]
fn is_name(name: &str) -> bool {
    name_prefixed(name).is_some()
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use proptest::prelude::*;

    use super::*;
    use crate::codec::Position;

    const UBL_CBC: &str = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2";
    const UBL_CAC: &str =
        "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2";

    /// A tree written as JSON, which keeps key order.
    fn json(text: &str) -> Value {
        crate::codec::json::decode(text.as_bytes(), &Limits::default()).unwrap()
    }

    fn xml(text: &str) -> Value {
        decode(text.as_bytes(), &XmlOptions::default(), &Limits::default()).unwrap()
    }

    fn xml_with(text: &str, namespaces: &[(&str, &str)]) -> Value {
        decode(text.as_bytes(), &options(namespaces), &Limits::default()).unwrap()
    }

    fn options(namespaces: &[(&str, &str)]) -> XmlOptions {
        XmlOptions {
            namespaces: namespaces
                .iter()
                .map(|(p, u)| ((*p).to_owned(), (*u).to_owned()))
                .collect(),
            ..XmlOptions::default()
        }
    }

    fn one_line() -> XmlOptions {
        XmlOptions {
            declaration: false,
            indent: None,
            ..XmlOptions::default()
        }
    }

    fn error(text: &str) -> DecodeError {
        decode(text.as_bytes(), &XmlOptions::default(), &Limits::default()).unwrap_err()
    }

    fn assert_error_at(err: &DecodeError, line: usize, column: usize, words: &str) {
        assert_eq!(err.format, Format::Xml);
        assert_eq!(
            err.position,
            Some(Position::LineColumn { line, column }),
            "{err}"
        );
        assert!(err.message.contains(words), "{err}");
    }

    fn encoded(value: &Value, options: &XmlOptions) -> String {
        String::from_utf8(encode(value, options).unwrap()).unwrap()
    }

    /// Follows object keys and list indexes (`a.b.0.c`).
    fn at<'v>(value: &'v Value, path: &str) -> &'v Value {
        path.split('.').fold(value, |v, step| match v {
            Value::Array(items) => &items[step.parse::<usize>().unwrap()],
            Value::Object(map) => map
                .get(step)
                .unwrap_or_else(|| panic!("no {step} in {map:?}")),
            other => panic!("no {step} in {other:?}"),
        })
    }

    #[test]
    fn the_root_element_is_the_only_key() {
        assert_eq!(xml("<a><b>x</b></a>"), json(r#"{"a": {"b": "x"}}"#));
        assert_eq!(xml("<a/>"), json(r#"{"a": ""}"#));
    }

    #[test]
    fn text_only_elements_are_their_exact_text() {
        assert_eq!(
            xml("<r><a>  x  y </a><b/><c></c><d> </d><n>12.50</n></r>"),
            json(r#"{"r": {"a": "  x  y ", "b": "", "c": "", "d": " ", "n": "12.50"}}"#)
        );
    }

    #[test]
    fn indentation_between_elements_is_ignored() {
        let doc = "<?xml version=\"1.0\"?>\n<r>\n  <a>1</a>\n\t<b>\n    <c>2</c>\n  </b>\n</r>\n";
        assert_eq!(xml(doc), json(r#"{"r": {"a": "1", "b": {"c": "2"}}}"#));
        // Line breaks in text are normalized as XML requires.
        assert_eq!(xml("<a>x\r\ny\rz</a>"), json(r#"{"a": "x\ny\nz"}"#));
    }

    #[test]
    fn attributes_children_and_text_make_an_object() {
        assert_eq!(
            xml(r#"<Amount currency="XAF">1500</Amount>"#),
            json(r##"{"Amount": {"@currency": "XAF", "#text": "1500"}}"##)
        );
        assert_eq!(
            xml("<r id='7' kind=\"x\">\n  <a>1</a>\n</r>"),
            json(r#"{"r": {"@id": "7", "@kind": "x", "a": "1"}}"#)
        );
        // Whitespace-only text beside attributes is not kept; other text is, exactly.
        assert_eq!(xml(r#"<p a="1">  </p>"#), json(r#"{"p": {"@a": "1"}}"#));
        assert_eq!(
            xml(r#"<p a="1"> x </p>"#),
            json(r##"{"p": {"@a": "1", "#text": " x "}}"##)
        );
        // Mixed content: the pieces, concatenated, where the first appeared.
        assert_eq!(
            xml("<p>one <b>two</b> three<i/>\n</p>"),
            json(r##"{"p": {"#text": "one  three", "b": "two", "i": ""}}"##)
        );
        assert_eq!(
            xml("<p a='1'>\n  <b>two</b>tail\n</p>"),
            json(r##"{"p": {"@a": "1", "b": "two", "#text": "tail\n"}}"##)
        );
    }

    #[test]
    fn repeated_elements_become_a_list_in_place() {
        assert_eq!(
            xml("<r><i>1</i><i>2</i></r>"),
            json(r#"{"r": {"i": ["1", "2"]}}"#)
        );
        assert_eq!(
            xml("<r><i>1</i><x/><i a='b'/><y>z</y><i>3</i></r>"),
            json(r#"{"r": {"i": ["1", {"@a": "b"}, "3"], "x": "", "y": "z"}}"#)
        );
    }

    #[test]
    fn many_differently_named_children_stay_in_order() {
        let mut doc = String::from("<r>");
        for i in 0..200 {
            doc.push_str(&format!("<e{i}>{i}</e{i}><e{}>again</e{}>", i / 2, i / 2));
        }
        doc.push_str("</r>");
        let value = xml(&doc);
        let r = at(&value, "r").as_object().unwrap();
        assert_eq!(r.len(), 200);
        assert_eq!(r.keys().nth(150), Some("e150"));
        assert_eq!(at(&value, "r.e75"), &json(r#"["75", "again", "again"]"#));
        assert_eq!(at(&value, "r.e150"), &Value::from("150"));
        assert_eq!(at(&value, "r.e199"), &Value::from("199"));
    }

    #[test]
    fn configured_namespaces_use_the_configured_prefix() {
        let namespaces = [("cbc", UBL_CBC), ("cac", UBL_CAC)];
        let usual = format!(
            r#"<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2" xmlns:cbc="{UBL_CBC}" xmlns:cac="{UBL_CAC}">
                 <cbc:ID>TOSL108</cbc:ID>
                 <cac:InvoiceLine><cbc:ID schemeID="x">1</cbc:ID></cac:InvoiceLine>
               </Invoice>"#
        );
        let other_prefixes = format!(
            r#"<in:Invoice xmlns:in="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">
                 <x:ID xmlns:x="{UBL_CBC}">TOSL108</x:ID>
                 <InvoiceLine xmlns="{UBL_CAC}"><b:ID xmlns:b="{UBL_CBC}" schemeID="x">1</b:ID></InvoiceLine>
               </in:Invoice>"#
        );
        let expected = json(
            r##"{"Invoice": {"cbc:ID": "TOSL108", "cac:InvoiceLine": {"cbc:ID": {"@schemeID": "x", "#text": "1"}}}}"##,
        );
        assert_eq!(xml_with(&usual, &namespaces), expected);
        assert_eq!(xml_with(&other_prefixes, &namespaces), expected);
        // Without configured namespaces, every name is its local name.
        assert_eq!(
            xml(&usual),
            json(
                r##"{"Invoice": {"ID": "TOSL108", "InvoiceLine": {"ID": {"@schemeID": "x", "#text": "1"}}}}"##
            )
        );
    }

    #[test]
    fn namespaced_attributes_and_declarations() {
        let doc = r#"<r xmlns="urn:default" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:q="urn:q"
                        a="1" q:b="2" xsi:type="T" xml:lang="fr"><q:c/></r>"#;
        assert_eq!(
            xml(doc),
            json(r#"{"r": {"@a": "1", "@b": "2", "@type": "T", "@lang": "fr", "c": ""}}"#)
        );
        assert_eq!(
            xml_with(doc, &[("p", "urn:q"), ("", "urn:default")]),
            json(r#"{"r": {"@a": "1", "@p:b": "2", "@type": "T", "@lang": "fr", "p:c": ""}}"#)
        );
    }

    #[test]
    fn attributes_with_the_same_key_are_errors() {
        let doc = "<r xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" type=\"a\" xsi:type=\"b\"/>";
        assert_error_at(
            &error(doc),
            1,
            67,
            "the attribute xsi:type of <r> has the same key \"@type\"",
        );
        let xsi = [("xsi", "http://www.w3.org/2001/XMLSchema-instance")];
        assert_eq!(
            xml_with(doc, &xsi),
            json(r#"{"r": {"@type": "a", "@xsi:type": "b"}}"#)
        );
    }

    #[test]
    fn undeclared_prefixes_are_errors() {
        assert_error_at(
            &error("<a>\n  <x:b/>\n</a>"),
            2,
            4,
            "undeclared namespace prefix \"x\" in <x:b>",
        );
        assert_error_at(
            &error("<a>\n  <b y:c='1'/>\n</a>"),
            2,
            6,
            "undeclared namespace prefix \"y\"",
        );
    }

    #[test]
    fn cdata_is_text_and_comments_and_instructions_are_dropped() {
        assert_eq!(
            xml(
                "<!-- head --><?app go?><a><!-- x -->1 <![CDATA[< 2 & 3]]><?pi?> 4</a><!-- tail -->"
            ),
            json(r#"{"a": "1 < 2 & 3 4"}"#)
        );
        let value = xml("<a><![CDATA[if (a < b && c > d) { ]]]]><![CDATA[> }]]></a>");
        assert_eq!(value, json(r#"{"a": "if (a < b && c > d) { ]]> }"}"#));
        let written = encoded(&value, &one_line());
        assert_eq!(
            written,
            "<a>if (a &lt; b &amp;&amp; c &gt; d) { ]]&gt; }</a>"
        );
        assert_eq!(xml(&written), value);
    }

    #[test]
    fn predefined_entities_and_character_references_are_resolved() {
        assert_eq!(
            xml(
                r#"<a t="&lt;&amp;&gt;&apos;&quot;&#233;&#xE9;">&lt;&amp;&gt;&apos;&quot;&#233;&#xE9;&#x1F600;</a>"#
            ),
            json(r##"{"a": {"@t": "<&>'\"éé", "#text": "<&>'\"éé😀"}}"##)
        );
        // Attribute values are normalized; references keep what they name.
        assert_eq!(
            xml("<a t='x\ty\r\nz&#10;w&#9;'/>"),
            json(r#"{"a": {"@t": "x y z\nw\t"}}"#)
        );
    }

    #[test]
    fn unknown_entities_are_errors_naming_them() {
        assert_error_at(
            &error("<a>\n  caf&eacute;\n</a>"),
            2,
            6,
            "unknown entity &eacute;",
        );
        assert_error_at(
            &error("<a t=\"x &nbsp; y\"/>"),
            1,
            9,
            "unknown entity &nbsp;",
        );
        assert_error_at(&error("<a>&#0;</a>"), 1, 4, "&#0;");
        assert_error_at(
            &error("<a>&#1;</a>"),
            1,
            4,
            "not a character allowed in XML",
        );
        assert_eq!(
            xml("<?xml version=\"1.1\"?><a>&#1;</a>"),
            json(r#"{"a": "\u0001"}"#)
        );
        assert_error_at(&error("<a>&#x;</a>"), 1, 4, "invalid character reference");
        assert_error_at(
            &error("<a t='&#+1;'/>"),
            1,
            7,
            "invalid character reference",
        );
        assert_error_at(&error("<a>fish & chips</a>"), 1, 9, "&amp;");
        assert_error_at(&error("<a t='fish & chips'/>"), 1, 12, "&amp;");
        assert_error_at(&error("<a t='1 < 2'/>"), 1, 9, "'<' is not allowed");
    }

    #[test]
    fn billion_laughs_fails_fast() {
        let mut doc =
            String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
        for i in 1..10 {
            let previous = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            doc.push_str(&format!(
                " <!ENTITY lol{i} \"{}\">\n",
                format!("&{previous};").repeat(10)
            ));
        }
        doc.push_str("]>\n<lolz>&lol9;</lolz>\n");
        let started = Instant::now();
        let err = error(&doc);
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_error_at(
            &err,
            3,
            2,
            "entity declarations are not allowed (entity expansion is never performed)",
        );
        // The same references without declarations are unknown entities.
        assert_error_at(&error("<lolz>&lol9;</lolz>"), 1, 7, "unknown entity &lol9;");
    }

    #[test]
    fn a_doctype_without_entities_is_ignored() {
        let doc = "<!DOCTYPE note SYSTEM \"Note.dtd\">\n<note><to>Tove</to></note>";
        assert_eq!(xml(doc), json(r#"{"note": {"to": "Tove"}}"#));
        let doc = "<!DOCTYPE note [<!ELEMENT note (#PCDATA)>]><note>x</note>";
        assert_eq!(xml(doc), json(r#"{"note": "x"}"#));
    }

    #[test]
    fn character_sets() {
        let latin1 = b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<a n=\"\xE9\">caf\xE9</a>";
        assert_eq!(
            decode(latin1, &XmlOptions::default(), &Limits::default()).unwrap(),
            json(r##"{"a": {"@n": "é", "#text": "café"}}"##)
        );
        let bom = "\u{FEFF}<?xml version=\"1.0\" encoding=\"UTF-8\"?><a>café</a>";
        assert_eq!(xml(bom), json(r#"{"a": "café"}"#));
        let mut utf16 = vec![0xFF, 0xFE];
        for unit in "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a>café</a>".encode_utf16() {
            utf16.extend_from_slice(&unit.to_le_bytes());
        }
        assert_eq!(
            decode(&utf16, &XmlOptions::default(), &Limits::default()).unwrap(),
            json(r#"{"a": "café"}"#)
        );
        let err = decode(
            b"<a>caf\xE9</a>",
            &XmlOptions::default(),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(err.message.contains("0xE9"), "{err}");
    }

    #[test]
    fn malformed_documents_are_located() {
        assert_error_at(
            &error("<a>\n  <b>x</c>\n</a>"),
            2,
            7,
            "mismatched end tag: expected </b> to close <b>, found </c>",
        );
        assert_error_at(
            &error("<a>\n  <b>x</b>\n"),
            3,
            1,
            "unexpected end of document: element <a> is not closed (opened at line 1, column 1)",
        );
        assert_error_at(
            &error("<a>\n  <b>x</b>\n  <c>"),
            3,
            6,
            "element <c> is not closed",
        );
        assert_error_at(
            &error("<a/>\n  junk"),
            2,
            3,
            "text after the end of the root element <a>",
        );
        assert_error_at(
            &error("<a/>\n<b/>"),
            2,
            1,
            "a second root element <b> after the root element <a>",
        );
        assert_error_at(
            &error("<a/>\n</a>"),
            2,
            1,
            "end tag </a> does not close any open element",
        );
        assert_error_at(&error("  hello <a/>"), 1, 3, "text before the root element");
        assert_error_at(&error("<a>\n  <b\n"), 2, 3, "tag is not closed");
        assert_error_at(&error("<a>\n  <b c=1/></a>"), 2, 8, "not quoted");
        assert_error_at(
            &error("<a b='1' b='2'/>"),
            1,
            10,
            "the attribute b appears twice",
        );
        assert_error_at(&error("<a>< b/></a>"), 1, 5, "expected an element name");
        assert_error_at(
            &error("<a><1b/></a>"),
            1,
            5,
            "\"1b\" is not a valid element name",
        );
        assert_error_at(&error("<a><!-- x </a>"), 1, 4, "comment is not closed");
        assert_error_at(
            &error("<?xml version=\"2.0\"?><a/>"),
            1,
            1,
            "unknown XML version: expected 1.0 or 1.1",
        );
        assert_error_at(
            &error("<a/>\n<?xml version=\"1.0\"?>"),
            2,
            1,
            "only allowed at the start",
        );
        for empty in ["", "  \n", "<?xml version=\"1.0\"?>\n<!-- nothing -->"] {
            assert!(
                error(empty)
                    .message
                    .contains("empty document, expected an XML element"),
                "{empty:?}"
            );
        }
    }

    #[test]
    fn nesting_is_limited() {
        let limits = Limits {
            max_bytes: 1 << 20,
            max_depth: 3,
        };
        let ok = decode(b"<a><b><c/></b></a>", &XmlOptions::default(), &limits);
        assert_eq!(ok.unwrap(), json(r#"{"a": {"b": {"c": ""}}}"#));
        let err = decode(
            b"<a>\n <b>\n  <c>\n   <d/></c></b></a>",
            &XmlOptions::default(),
            &limits,
        )
        .unwrap_err();
        assert_error_at(&err, 4, 4, "nested deeper than the limit of 3 levels");
        let deep = "<a>".repeat(100_000);
        let err = decode(deep.as_bytes(), &XmlOptions::default(), &Limits::default()).unwrap_err();
        assert_error_at(&err, 1, 193, "limit of 64 levels");
        let small = Limits {
            max_bytes: 8,
            max_depth: 8,
        };
        let err = decode(b"<a>123456</a>", &XmlOptions::default(), &small).unwrap_err();
        assert!(err.message.contains("over the limit of 8 bytes"), "{err}");
    }

    #[test]
    fn encode_escapes_text_and_attributes() {
        let value =
            json(r#"{"r": {"@q": "a\"b<c>&d'e\tf\ng", "t": "x & y < z > w \"q\" 'a'\r\n"}}"#);
        let written = encoded(&value, &one_line());
        assert_eq!(
            written,
            r#"<r q="a&quot;b&lt;c&gt;&amp;d'e&#9;f&#10;g"><t>x &amp; y &lt; z &gt; w "q" 'a'&#13;
</t></r>"#
        );
        assert_eq!(xml(&written), value);
    }

    #[test]
    fn encode_refuses_what_xml_cannot_hold() {
        for (text, what) in [
            ("a\u{1}b", "U+0001"),
            ("a\u{FFFE}b", "U+FFFE"),
            ("\u{FFFF}", "U+FFFF"),
        ] {
            let value = Value::Object(Map::from_iter([("r", Value::from(text))]));
            let err = encode(&value, &one_line()).unwrap_err();
            assert!(err.message.contains(what), "{what}: {err}");
            assert_eq!(err.path, "r");
        }
        // the characters around them are fine
        let value = Value::Object(Map::from_iter([(
            "r",
            Value::from("\u{FFFD}\u{EFBF}\u{10FFFF}"),
        )]));
        assert!(encode(&value, &one_line()).is_ok());
    }

    #[test]
    fn encode_attributes_text_and_scalars() {
        let value = json(
            r##"{"Amount": {"@currency": "XAF", "@rate": 1.50, "@final": true, "#text": 1500.50}}"##,
        );
        assert_eq!(
            encoded(&value, &one_line()),
            r#"<Amount currency="XAF" rate="1.50" final="true">1500.50</Amount>"#
        );
        let value = json(r#"{"r": {"n": null, "e": {}, "s": "", "a": {"@x": null}, "z": []}}"#);
        assert_eq!(
            encoded(&value, &one_line()),
            r#"<r><n/><e/><s/><a x=""/></r>"#
        );
    }

    #[test]
    fn encode_repeats_list_items() {
        let value = json(r##"{"r": {"i": ["1", {"@a": "b", "#text": "2"}, "3"]}}"##);
        assert_eq!(
            encoded(&value, &one_line()),
            r#"<r><i>1</i><i a="b">2</i><i>3</i></r>"#
        );
        let err = encode(&json(r#"{"r": {"i": ["1", ["2"]]}}"#), &one_line()).unwrap_err();
        assert_eq!(err.path, "r.i[1]");
        assert!(err.message.contains("a list inside a list"), "{err}");
        let err = encode(&json(r#"{"r": ["1", "2"]}"#), &one_line()).unwrap_err();
        assert!(err.message.contains("cannot be a list"), "{err}");
    }

    #[test]
    fn encode_declares_namespaces_on_the_root() {
        let options = XmlOptions {
            namespaces: vec![
                (String::new(), "urn:inv".to_owned()),
                ("cbc".to_owned(), UBL_CBC.to_owned()),
            ],
            root: Some("Invoice".to_owned()),
            declaration: false,
            indent: None,
        };
        let value = json(r##"{"cbc:ID": {"@cbc:x": "1", "#text": "A&B"}, "Note": "n"}"##);
        let written = encoded(&value, &options);
        assert_eq!(
            written,
            format!(
                r#"<Invoice xmlns="urn:inv" xmlns:cbc="{UBL_CBC}"><cbc:ID cbc:x="1">A&amp;B</cbc:ID><Note>n</Note></Invoice>"#
            )
        );
        let decoded = decode(written.as_bytes(), &options, &Limits::default()).unwrap();
        assert_eq!(at(&decoded, "Invoice"), &value);

        let err = encode(&json(r#"{"cac:Line": "1"}"#), &options).unwrap_err();
        assert_eq!(err.path, "cac:Line");
        assert!(err.message.contains("prefix \"cac\""), "{err}");
        // A prefix may also be declared by an attribute of the value.
        let value = json(r#"{"cac:Line": {"@xmlns:cac": "urn:cac", "cac:Qty": "1"}}"#);
        assert!(encode(&value, &options).is_ok());
    }

    #[test]
    fn encode_rejects_invalid_names_with_their_path() {
        let options = XmlOptions {
            root: Some("Declaration".to_owned()),
            ..one_line()
        };
        let value =
            json(r#"{"Item": [{"Packages": "1"}, {"Packages": "2"}, {"Packages": {"2nd": "x"}}]}"#);
        let err = encode(&value, &options).unwrap_err();
        assert_eq!(err.format, Format::Xml);
        assert_eq!(err.path, "Item[2].Packages.2nd");
        assert!(
            err.message
                .contains("\"2nd\" is not a valid XML element name"),
            "{err}"
        );

        let err = encode(&json(r#"{"r": {"a": {"@bad name": "1"}}}"#), &one_line()).unwrap_err();
        assert_eq!(err.path, "r.a.@bad name");
        assert!(err.message.contains("\"@bad name\""), "{err}");

        for bad in [
            "", "-a", ".a", "1a", "a b", "a:b:c", ":a", "a:", "a&b", "#text2",
        ] {
            let mut map = Map::new();
            map.insert(bad, Value::from("x"));
            let err = encode(&Value::Object(map), &one_line()).unwrap_err();
            assert!(err.message.contains(&format!("\"{bad}\"")), "{bad}: {err}");
        }
        for good in ["a", "_a", "a-b.c_1", "p:a", "Établissement"] {
            assert!(is_name(good), "{good}");
        }

        let err = encode(&json(r#"{"a": "1", "b": "2"}"#), &one_line()).unwrap_err();
        assert_eq!(err.path, "(root)");
        assert!(err.message.contains("exactly one key"), "{err}");
        let err = encode(&json(r#"{"r": {"@a": {"x": "1"}}}"#), &one_line()).unwrap_err();
        assert_eq!(err.path, "r.@a");
        let err = encode(&json(r#"{"r": "a\u0001b"}"#), &one_line()).unwrap_err();
        assert!(err.message.contains("U+0001"), "{err}");
    }

    #[test]
    fn encode_indents_or_writes_one_line() {
        let value = json(r#"{"r": {"@id": "7", "a": {"b": "x", "c": ""}, "d": ["y", "z"]}}"#);
        assert_eq!(
            encoded(&value, &XmlOptions::default()),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<r id=\"7\">\n  <a>\n    <b>x</b>\n    <c/>\n  </a>\n  <d>y</d>\n  <d>z</d>\n</r>"
        );
        let four = XmlOptions {
            indent: Some(4),
            declaration: false,
            ..XmlOptions::default()
        };
        assert_eq!(
            encoded(&json(r#"{"r": {"a": {"b": "x"}}}"#), &four),
            "<r>\n    <a>\n        <b>x</b>\n    </a>\n</r>"
        );
        let line = XmlOptions {
            indent: None,
            ..XmlOptions::default()
        };
        assert_eq!(
            encoded(&value, &line),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><r id=\"7\"><a><b>x</b><c/></a><d>y</d><d>z</d></r>"
        );
        // Mixed content stays on one line: added whitespace would be text.
        let mixed = json(r##"{"r": {"p": {"#text": "one", "b": {"c": "two"}}}}"##);
        let written = encoded(&mixed, &XmlOptions::default());
        assert!(
            written.ends_with("<r>\n  <p>one<b><c>two</c></b></p>\n</r>"),
            "{written}"
        );
        assert_eq!(xml(&written), mixed);
    }

    #[test]
    fn encode_with_a_root_option() {
        let options = XmlOptions {
            root: Some("Envelope".to_owned()),
            ..one_line()
        };
        assert_eq!(
            encoded(&json(r#"{"a": "1", "b": "2"}"#), &options),
            "<Envelope><a>1</a><b>2</b></Envelope>"
        );
        assert_eq!(
            encoded(&Value::from("x"), &options),
            "<Envelope>x</Envelope>"
        );
        let err = encode(&json(r#"[{"a": "1"}]"#), &options).unwrap_err();
        assert_eq!(err.path, "(root)");
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn xml_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                xml_files(&path, found);
            } else if path.extension().is_some_and(|e| e == "xml") {
                found.push(path);
            }
        }
    }

    fn fixture(relative: &str, options: &XmlOptions) -> Value {
        let bytes = std::fs::read(fixtures().join(relative)).unwrap();
        decode(&bytes, options, &Limits::default()).unwrap()
    }

    #[test]
    fn decodes_every_fixture() {
        let mut files = Vec::new();
        xml_files(&fixtures().join("schemas"), &mut files);
        xml_files(&fixtures().join("samples"), &mut files);
        assert!(files.len() >= 40, "{files:?}");
        let ubl = options(&[("cbc", UBL_CBC), ("cac", UBL_CAC)]);
        let mut with_bom = 0;
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            with_bom += usize::from(bytes.starts_with(b"\xEF\xBB\xBF"));
            for options in [&XmlOptions::default(), &ubl] {
                let value = decode(&bytes, options, &Limits::default())
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert_eq!(
                    value.as_object().map(Map::len),
                    Some(1),
                    "{}",
                    file.display()
                );
                // What is decoded can be written back and reads the same.
                let written =
                    encode(&value, options).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let again = decode(&written, options, &Limits::default()).unwrap();
                assert_eq!(again, value, "{}", file.display());
            }
        }
        assert!(with_bom >= 1);

        let default = XmlOptions::default();
        let asycuda = fixture(
            "schemas/asycuda-export/example-export-declaration.xml",
            &default,
        );
        assert_eq!(
            at(&asycuda, "ASYCUDA.Traders.Exporter.Exporter_name"),
            &Value::from("Établissements Mabiala & Fils SARL")
        );
        assert_eq!(
            at(&asycuda, "ASYCUDA.Item").as_array().map(<[_]>::len),
            Some(2)
        );
        assert_eq!(
            at(
                &asycuda,
                "ASYCUDA.Item.1.Tarification.HScode.Commodity_code"
            ),
            &Value::from("180100")
        );

        let notice = fixture("samples/customs/assessment-notice.xml", &default);
        let taxes = at(&notice, "ASYCUDA.Assessment_notice.Item_tax_total");
        assert_eq!(taxes.as_array().map(<[_]>::len), Some(2));
        assert_eq!(at(taxes, "1.Tax_amount"), &Value::from("34500"));

        let invoice = fixture("schemas/ubl-2.1/examples/UBL-Invoice-2.1-Example.xml", &ubl);
        assert_eq!(at(&invoice, "Invoice.cbc:ID"), &Value::from("TOSL108"));
        assert_eq!(
            at(&invoice, "Invoice.cbc:InvoiceTypeCode"),
            &json(r##"{"@listID": "UN/ECE 1001 Subset", "@listAgencyID": "6", "#text": "380"}"##)
        );
        assert!(at(&invoice, "Invoice.cac:InvoiceLine").as_array().is_some());

        let wco = fixture(
            "schemas/wco-dm/samples/declarations/TT_IM004a.xml",
            &default,
        );
        assert_eq!(at(&wco, "MetaData.WCOTypeName"), &Value::from("DEC"));
    }

    /// Element names, some in the namespace bound to `ns` in the options.
    fn name() -> impl Strategy<Value = String> {
        (
            proptest::option::of(Just("ns:")),
            "[a-zA-Z_é][a-zA-Z0-9_.é-]{0,4}",
        )
            .prop_map(|(prefix, local)| format!("{}{local}", prefix.unwrap_or_default()))
    }

    fn any_text() -> impl Strategy<Value = String> {
        "[ -~\t\n\ré€]{0,10}"
    }

    fn element() -> impl Strategy<Value = Value> {
        any_text()
            .prop_map(Value::from)
            .prop_recursive(4, 48, 4, |inner| {
                let child = prop_oneof![
                    3 => inner.clone(),
                    1 => proptest::collection::vec(inner, 2..4).prop_map(Value::Array),
                ];
                (
                    proptest::collection::vec((name(), any_text()), 0..3),
                    proptest::collection::vec((name(), child), 0..4),
                    proptest::option::of(any_text().prop_filter("not blank", |t| !is_blank(t))),
                    any::<proptest::sample::Index>(),
                )
                    .prop_filter_map(
                        "an object has an attribute or a child",
                        |(attributes, children, text, text_at)| {
                            let mut map = Map::new();
                            for (name, value) in attributes {
                                map.insert(format!("@{name}"), Value::from(value));
                            }
                            let mut elements = Map::new();
                            for (name, value) in children {
                                elements.insert(name, value);
                            }
                            if map.is_empty() && elements.is_empty() {
                                return None;
                            }
                            let text_at = text_at.index(elements.len() + 1);
                            let mut text = text.map(Value::from);
                            for (i, (name, value)) in elements.into_iter().enumerate() {
                                if i == text_at
                                    && let Some(text) = text.take()
                                {
                                    map.insert(TEXT_KEY, text);
                                }
                                map.insert(name, value);
                            }
                            if let Some(text) = text {
                                map.insert(TEXT_KEY, text);
                            }
                            Some(Value::Object(map))
                        },
                    )
            })
    }

    proptest! {
        #[test]
        fn canonical_trees_round_trip(root in name(), content in element(), indent in proptest::option::of(0usize..4)) {
            let mut tree = Map::new();
            tree.insert(root, content);
            let tree = Value::Object(tree);
            let options = XmlOptions {
                indent,
                ..options(&[("ns", "urn:test:ns")])
            };
            let written = encode(&tree, &options).unwrap();
            let read = decode(&written, &options, &Limits::default());
            prop_assert_eq!(read, Ok(tree), "{}", String::from_utf8_lossy(&written));
        }
    }
}
