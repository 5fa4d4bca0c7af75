//! The schema fixtures: xmllint accepts the valid samples and rejects the
//! invalid ones, and nzela reads every XML file there.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const SCHEMAS: &str = "tests/fixtures/schemas";

/// Every file under `dir` (recursively) whose name ends with `.ext`, sorted.
fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The ISO 20022 sample folders, each with the XSD named after it.
fn iso_sample_sets() -> Vec<(String, PathBuf, PathBuf)> {
    let iso = repo_file(SCHEMAS).join("iso20022");
    let mut sets: Vec<_> = std::fs::read_dir(iso.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|folder| {
            let message = folder.file_name().unwrap().to_str().unwrap().to_owned();
            let xsd = iso.join("xsd").join(format!("{message}.xsd"));
            assert!(
                xsd.is_file(),
                "no XSD {} for the samples in {}",
                xsd.display(),
                folder.display()
            );
            (message, xsd, folder)
        })
        .collect();
    sets.sort();
    assert!(sets.len() >= 5, "the ISO 20022 sample folders are missing");
    sets
}

fn short(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn xmllint_accepts_every_valid_iso20022_sample() {
    let mut checked = 0;
    let mut rejected = Vec::new();
    for (_, xsd, folder) in iso_sample_sets() {
        for file in files_under(&folder.join("valid"), "xml") {
            checked += 1;
            if let Err((code, report)) = xmllint_file(&xsd, &file) {
                rejected.push(format!("{} (exit {code:?}):\n{report}", short(&file)));
            }
        }
    }
    assert!(checked >= 16, "only {checked} valid samples found");
    assert!(
        rejected.is_empty(),
        "valid samples rejected:\n{}",
        rejected.join("\n")
    );
}

#[test]
fn xmllint_rejects_every_invalid_iso20022_sample() {
    let mut checked = 0;
    let mut accepted = Vec::new();
    for (_, xsd, folder) in iso_sample_sets() {
        let invalid = folder.join("invalid");
        if !invalid.is_dir() {
            continue;
        }
        for file in files_under(&invalid, "xml") {
            checked += 1;
            match xmllint_file(&xsd, &file) {
                Ok(()) => accepted.push(short(&file)),
                // Rejected for what it holds, not because the schema
                // could not be loaded (xmllint exits 4 or 5 then).
                Err((code, report)) => assert!(
                    matches!(code, Some(1..=3)),
                    "{}: xmllint exit {code:?}, not a validation failure:\n{report}",
                    short(&file)
                ),
            }
        }
    }
    assert!(checked >= 9, "only {checked} invalid samples found");
    assert!(
        accepted.is_empty(),
        "invalid samples accepted: {accepted:?}"
    );
}

#[test]
fn xmllint_accepts_the_official_examples() {
    let s = repo_file(SCHEMAS);
    let mut pairs = vec![(
        s.join("asycuda-export/asycuda-export-declaration.xsd"),
        s.join("asycuda-export/example-export-declaration.xml"),
    )];
    for doc in ["Invoice", "Order", "OrderResponse"] {
        pairs.push((
            s.join(format!("ubl-2.1/xsd/maindoc/UBL-{doc}-2.1.xsd")),
            s.join(format!("ubl-2.1/examples/UBL-{doc}-2.1-Example.xml")),
        ));
    }
    for (kind, harness) in [
        ("declarations", "validate_declaration.xsd"),
        ("notifications", "validate_notification.xsd"),
    ] {
        let files = files_under(&s.join("wco-dm/samples").join(kind), "xml");
        assert!(!files.is_empty());
        pairs.extend(
            files
                .into_iter()
                .map(|f| (s.join("wco-dm/harness").join(harness), f)),
        );
    }
    for (xsd, file) in pairs {
        if let Err((code, report)) = xmllint_file(&xsd, &file) {
            panic!(
                "{} does not validate against {} (exit {code:?}):\n{report}",
                short(&file),
                short(&xsd)
            );
        }
    }
}

/// The local name of the root element of an XML document.
fn root_element(text: &str) -> String {
    let mut rest = text.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<?") {
            rest = &r[r.find("?>").expect("unterminated instruction") + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = &r[r.find("-->").expect("unterminated comment") + 3..];
        } else if let Some(r) = rest.strip_prefix("<!") {
            rest = &r[r.find('>').expect("unterminated declaration") + 1..];
        } else {
            break;
        }
    }
    let name = rest.strip_prefix('<').expect("no root element");
    let end = name
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .expect("unterminated root tag");
    let qname = &name[..end];
    qname.rsplit(':').next().unwrap().to_owned()
}

#[test]
fn nzela_reads_every_xml_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.yaml");
    std::fs::write(
        &whole,
        "name: whole\ninput: xml\noutput: json\nfields:\n  document: $\n",
    )
    .unwrap();

    let files = files_under(&repo_file(SCHEMAS), "xml");
    assert!(files.len() >= 40, "only {} XML fixtures found", files.len());
    for family in ["iso20022", "ubl-2.1", "wco-dm", "soap11", "asycuda-export"] {
        assert!(
            files
                .iter()
                .any(|f| f.to_str().unwrap().contains(&format!("/{family}/"))),
            "no {family} fixture"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let run = map_file(&whole, file);
        if run.code != Some(0) {
            failures.push(format!(
                "{}: exit {:?}: {}",
                short(file),
                run.code,
                run.stderr.trim()
            ));
            continue;
        }
        let json: serde_json::Value = match serde_json::from_str(&run.stdout) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: the output is not JSON ({e})", short(file)));
                continue;
            }
        };
        let Some(document) = json.get("document").and_then(|d| d.as_object()) else {
            failures.push(format!(
                "{}: no top-level `document` object in {}",
                short(file),
                run.stdout
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        let root_name = root_element(&text);
        let keys: Vec<&String> = document.keys().collect();
        if keys != [&root_name] {
            failures.push(format!(
                "{}: `document` holds {keys:?}, not the root element {root_name}",
                short(file)
            ));
        } else if document[&root_name]
            .as_object()
            .is_none_or(|o| o.is_empty())
        {
            failures.push(format!(
                "{}: the root element {root_name} was read as {}",
                short(file),
                document[&root_name]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "nzela could not read:\n{}",
        failures.join("\n")
    );
}
