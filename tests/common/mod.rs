//! Helpers shared by the end-to-end tests: running the real `nzela` binary,
//! validating XML with `xmllint`, reading text back out of XML, and exact
//! decimal arithmetic on amounts written as text; in [`daemon`], running
//! `nzela run` with an HTTP client and a scripted HTTP peer.
//!
//! Each test crate uses only some of them.
#![allow(dead_code)]

pub mod daemon;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root (the root package's folder).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path from the root.
pub fn repo_file(rel: &str) -> PathBuf {
    root().join(rel)
}

/// One of the reference mappings in `mappings/`.
pub fn mapping(name: &str) -> PathBuf {
    root().join("mappings").join(name)
}

pub const ASYCUDA_MAPPING: &str = "marketplace-order-to-asycuda-export.yaml";
pub const UBL_MAPPING: &str = "marketplace-order-to-ubl-order.yaml";
pub const MOMO_MAPPING: &str = "assessment-to-momo-requesttopay.yaml";

pub const ASYCUDA_XSD: &str =
    "tests/fixtures/schemas/asycuda-export/asycuda-export-declaration.xsd";
pub const UBL_ORDER_XSD: &str = "tests/fixtures/schemas/ubl-2.1/xsd/maindoc/UBL-Order-2.1.xsd";
pub const SAMPLE_ORDER: &str = "tests/fixtures/samples/marketplace/order-paid.json";
pub const SAMPLE_ASSESSMENT: &str = "tests/fixtures/samples/customs/assessment-notice.xml";

/// What one run of the binary gave.
#[derive(Debug)]
pub struct Run {
    /// The exit code; `None` when the process was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8(out.stdout).expect("nzela wrote stdout that is not UTF-8"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics, showing everything, unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics unless the run succeeded; returns stdout.
    pub fn ok(&self) -> &str {
        self.assert_code(0);
        &self.stdout
    }
}

/// The `nzela` binary built for these tests.
pub fn nzela() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nzela"))
}

/// Runs `nzela ARGS`, feeding `stdin` (nothing when `None`), in `dir` (the
/// repository root when `None`).
pub fn run_nzela(args: &[&str], stdin: Option<&[u8]>, dir: Option<&Path>) -> Run {
    let mut cmd = nzela();
    cmd.args(args)
        .current_dir(dir.map_or_else(root, Path::to_path_buf))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot start the nzela binary");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        // A writer thread: the child may write a large result while we write.
        // The child may also stop before reading everything (an error): a
        // broken pipe is then expected, and its exit code tells the story.
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
        let out = child.wait_with_output().expect("cannot wait for nzela");
        writer.join().expect("the stdin writer panicked");
        Run::from_output(out)
    } else {
        Run::from_output(child.wait_with_output().expect("cannot wait for nzela"))
    }
}

/// `nzela map --mapping MAPPING -` with `input` on standard input.
pub fn map_stdin(mapping: &Path, input: &[u8]) -> Run {
    let m = mapping.to_str().expect("UTF-8 path");
    run_nzela(&["map", "--mapping", m, "-"], Some(input), None)
}

/// `nzela map --mapping MAPPING FILE`.
pub fn map_file(mapping: &Path, file: &Path) -> Run {
    let m = mapping.to_str().expect("UTF-8 path");
    let f = file.to_str().expect("UTF-8 path");
    run_nzela(&["map", "--mapping", m, f], None, None)
}

/// Validates `xml` against the schema at `xsd` with `xmllint`. `Err` holds
/// xmllint's report. Panics when xmllint cannot be run: a missing validator
/// must fail the test, never skip it.
pub fn xmllint(xsd: &Path, xml: &[u8]) -> Result<(), String> {
    let mut child = Command::new("xmllint")
        .arg("--noout")
        .arg("--nonet")
        .arg("--schema")
        .arg(xsd)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run xmllint ({e}): install libxml2-utils, the XML tests need a real validator")
        });
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let bytes = xml.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&bytes);
    });
    let out = child.wait_with_output().expect("cannot wait for xmllint");
    writer.join().expect("the stdin writer panicked");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "xmllint --schema {} rejects the document (exit {:?}):\n{}",
            xsd.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Validates the file at `file` against `xsd`; `Ok` or `Err` with the exit
/// code and report. Panics when xmllint cannot be run.
pub fn xmllint_file(xsd: &Path, file: &Path) -> Result<(), (Option<i32>, String)> {
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--nonet")
        .arg("--schema")
        .arg(xsd)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run xmllint ({e}): install libxml2-utils, the XML tests need a real validator")
        });
    if out.status.success() {
        Ok(())
    } else {
        Err((
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Panics with xmllint's report unless `xml` validates against `xsd` (a path
/// from the repository root).
pub fn assert_valid(xsd: &str, xml: &str) {
    if let Err(report) = xmllint(&repo_file(xsd), xml.as_bytes()) {
        panic!("{report}\n--- document\n{xml}");
    }
}

/// The XML text with the whitespace between tags removed (`>  \n <` → `><`),
/// for comparing documents that differ only in indentation.
pub fn squeeze_xml(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml.trim();
    while let Some(i) = rest.find('>') {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('<') {
            rest = trimmed;
        }
    }
    out.push_str(rest);
    out
}

/// One element found in an XML document by [`elements`].
#[derive(Debug, Clone, Copy)]
pub struct Element<'a> {
    /// The start tag, `<` to `>`.
    pub start: &'a str,
    /// Everything between the start and end tags, as written.
    pub inner: &'a str,
}

impl Element<'_> {
    /// The decoded value of attribute `name` (written with `"` or `'`).
    pub fn attr(&self, name: &str) -> Option<String> {
        let mut rest = self.start;
        while let Some(i) = rest.find(name) {
            let before = rest[..i].chars().next_back();
            let after = rest[i + name.len()..].trim_start();
            if before.is_some_and(char::is_whitespace)
                && let Some(value) = after.strip_prefix('=')
            {
                let value = value.trim_start();
                let quote = value.chars().next()?;
                let body = &value[1..];
                let end = body.find(quote)?;
                return Some(decode_text(&body[..end]));
            }
            rest = &rest[i + name.len()..];
        }
        None
    }

    /// The element's text, decoded. Panics if it has child elements.
    pub fn text(&self) -> String {
        decode_text(self.inner)
    }

    /// The elements named `tag` inside this one.
    pub fn find(&self, tag: &str) -> Vec<Element<'_>> {
        elements(self.inner, tag)
    }

    /// The one element named `tag` inside this one; panics unless exactly one.
    pub fn one(&self, tag: &str) -> Element<'_> {
        let found = self.find(tag);
        assert_eq!(found.len(), 1, "expected one <{tag}> in <{}>", self.start);
        found[0]
    }
}

/// Every element named exactly `tag` (prefix included, e.g. `cbc:ID`) in
/// `xml`, in document order. Made for the documents these tests read: an
/// element does not contain another of the same name.
pub fn elements<'a>(xml: &'a str, tag: &str) -> Vec<Element<'a>> {
    let open = format!("<{tag}");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = xml[at..].find(&open) {
        let begin = at + i;
        let after = &xml[begin + open.len()..];
        let Some(next) = after.chars().next() else {
            break;
        };
        if !(next == '>' || next == '/' || next.is_whitespace()) {
            at = begin + open.len();
            continue;
        }
        let end_of_start = begin + xml[begin..].find('>').expect("unterminated start tag");
        let start = &xml[begin..=end_of_start];
        if start.ends_with("/>") {
            out.push(Element { start, inner: "" });
            at = end_of_start + 1;
            continue;
        }
        let body_from = end_of_start + 1;
        let body_len = xml[body_from..]
            .find(&close)
            .unwrap_or_else(|| panic!("no {close} after {start}"));
        out.push(Element {
            start,
            inner: &xml[body_from..body_from + body_len],
        });
        at = body_from + body_len + close.len();
    }
    out
}

/// The decoded text of every element named `tag`.
pub fn texts(xml: &str, tag: &str) -> Vec<String> {
    elements(xml, tag).iter().map(Element::text).collect()
}

/// The one element named `tag`'s decoded text; panics unless exactly one.
pub fn text_of(xml: &str, tag: &str) -> String {
    let all = texts(xml, tag);
    assert_eq!(
        all.len(),
        1,
        "expected one <{tag}>, found {}:\n{xml}",
        all.len()
    );
    all.into_iter().next().unwrap()
}

/// XML character data to text: the five predefined entities, character
/// references and CDATA sections, with line ends normalized as an XML reader
/// does. Panics on markup (a child element) or an unknown entity.
pub fn decode_text(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n").replace('\r', "\n");
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw.as_str();
    while let Some(i) = rest.find(['&', '<']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
            let end = cdata.find("]]>").expect("unterminated CDATA section");
            out.push_str(&cdata[..end]);
            rest = &cdata[end + 3..];
            continue;
        }
        assert!(!rest.starts_with('<'), "expected text, found markup: {raw}");
        let end = rest
            .find(';')
            .unwrap_or_else(|| panic!("unterminated reference in {raw}"));
        let name = &rest[1..end];
        let c = match name {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = name.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16)
                } else if let Some(dec) = name.strip_prefix('#') {
                    dec.parse()
                } else {
                    panic!("unknown entity &{name}; in {raw}")
                };
                char::from_u32(code.expect("bad character reference")).expect("not a character")
            }
        };
        out.push(c);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The sample `order.paid` webhook, parsed.
pub fn sample_order() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_file(SAMPLE_ORDER)).expect("sample order");
    serde_json::from_str(&text).expect("the sample order is JSON")
}

/// A decimal number written as text (`"185.5"`, `"12"`), as an integer count
/// of `10^-scale` units. Panics on anything else or on more than `scale`
/// decimals.
pub fn scaled(text: &str, scale: u32) -> i128 {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    assert!(
        frac.len() <= scale as usize,
        "{text} has more than {scale} decimals"
    );
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "not a decimal: {text}"
    );
    assert!(
        frac.bytes().all(|b| b.is_ascii_digit()),
        "not a decimal: {text}"
    );
    let padded = format!("{frac:0<width$}", width = scale as usize);
    int.parse::<i128>().unwrap() * 10i128.pow(scale)
        + if padded.is_empty() {
            0
        } else {
            padded.parse::<i128>().unwrap()
        }
}

/// An integer count of `10^-scale` units written with exactly `scale` decimals.
pub fn unscaled(units: i128, scale: u32) -> String {
    assert!(units >= 0);
    let p = 10i128.pow(scale);
    if scale == 0 {
        units.to_string()
    } else {
        format!(
            "{}.{:0width$}",
            units / p,
            units % p,
            width = scale as usize
        )
    }
}

/// `value` (in `10^-from` units) rounded half to even to `10^-to` units
/// (`to <= from`).
pub fn round_half_even(value: i128, from: u32, to: u32) -> i128 {
    assert!(to <= from && value >= 0);
    let step = 10i128.pow(from - to);
    let (q, r) = (value / step, value % step);
    match (2 * r).cmp(&step) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    }
}

/// The amount of one item, `round_half_even(unit_price × quantity, 2)`, in cents.
pub fn item_cents(unit_price: &str, quantity: u64) -> i128 {
    let decimals = unit_price
        .split_once('.')
        .map_or(0, |(_, f)| f.len() as u32)
        .max(2);
    round_half_even(
        scaled(unit_price, decimals) * i128::from(quantity),
        decimals,
        2,
    )
}

/// The text of a JSON value that holds a decimal (a string or a number).
pub fn decimal_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => n.to_string(),
        other => panic!("not a decimal: {other}"),
    }
}
