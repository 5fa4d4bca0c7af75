//! Lookup tables: CSV files beside a mapping that translate one code into
//! another (`BAG` → `BG`). Loaded once, when the mapping is loaded.

use std::collections::HashMap;
use std::path::Path;

/// A loaded lookup table.
#[derive(Debug)]
pub(crate) struct LookupTable {
    pub name: String,
    /// The file as written in the mapping, for messages.
    pub file: String,
    entries: HashMap<String, String>,
}

/// Which columns of the CSV file are the key and the value.
#[derive(Debug, Default)]
pub(crate) struct LookupSpec {
    pub file: String,
    /// Column name; the first column when absent.
    pub key: Option<String>,
    /// Column name; the second column when absent.
    pub value: Option<String>,
    /// `,` or `;`; guessed from the header line when absent.
    pub delimiter: Option<u8>,
}

impl LookupTable {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// Loads the table; `base` is the mapping file's folder. The error is a
    /// sentence naming the file and, where it applies, its line.
    pub fn load(name: &str, spec: &LookupSpec, base: &Path) -> Result<LookupTable, String> {
        let path = base.join(&spec.file);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("lookup table {name}: cannot read {}: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            format!(
                "lookup table {name}: {} is not UTF-8 (invalid byte at offset {})",
                spec.file,
                e.utf8_error().valid_up_to()
            )
        })?;
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(&text);
        let delimiter = spec.delimiter.unwrap_or_else(|| {
            let header = text.lines().next().unwrap_or_default();
            if header.contains(';') && !header.contains(',') {
                b';'
            } else {
                b','
            }
        });
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| format!("lookup table {name}: {}: {e}", spec.file))?
            .clone();
        let column =
            |wanted: &Option<String>, default: usize, what: &str| -> Result<usize, String> {
                match wanted {
                Some(col) => headers.iter().position(|h| h.trim() == col).ok_or_else(|| {
                    format!(
                        "lookup table {name}: {} has no {what} column \"{col}\" (its columns: {})",
                        spec.file,
                        headers.iter().collect::<Vec<_>>().join(", ")
                    )
                }),
                None if headers.len() > default => Ok(default),
                None => Err(format!(
                    "lookup table {name}: {} needs at least two columns (key, value), found {}",
                    spec.file,
                    headers.len()
                )),
            }
            };
        let key_col = column(&spec.key, 0, "key")?;
        let value_col = column(&spec.value, 1, "value")?;
        let mut entries = HashMap::new();
        for record in reader.records() {
            let record = record.map_err(|e| format!("lookup table {name}: {}: {e}", spec.file))?;
            let line = record.position().map_or(0, |p| p.line());
            let (Some(k), Some(v)) = (record.get(key_col), record.get(value_col)) else {
                continue;
            };
            let k = k.trim();
            if k.is_empty() {
                continue;
            }
            if entries.insert(k.to_owned(), v.trim().to_owned()).is_some() {
                return Err(format!(
                    "lookup table {name}: {} line {line}: key \"{k}\" is listed twice",
                    spec.file
                ));
            }
        }
        if entries.is_empty() {
            return Err(format!("lookup table {name}: {} has no entries", spec.file));
        }
        Ok(LookupTable {
            name: name.to_owned(),
            file: spec.file.clone(),
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nzela-lookup-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn loads_first_two_columns_or_named_ones() {
        let d = tmp("cols");
        write(&d, "k.csv", "unit,code,label\nBAG,BG,Bag\nBOX,BX,Box\n");
        let t = LookupTable::load(
            "kind",
            &LookupSpec {
                file: "k.csv".into(),
                ..Default::default()
            },
            &d,
        )
        .unwrap();
        assert_eq!(t.get("BAG"), Some("BG"));
        assert_eq!(t.get("bag"), None);
        let spec = LookupSpec {
            file: "k.csv".into(),
            key: Some("code".into()),
            value: Some("label".into()),
            delimiter: None,
        };
        let t = LookupTable::load("kind", &spec, &d).unwrap();
        assert_eq!(t.get("BX"), Some("Box"));
        write(&d, "s.csv", "a;b\nx;1\n");
        let t = LookupTable::load(
            "s",
            &LookupSpec {
                file: "s.csv".into(),
                ..Default::default()
            },
            &d,
        )
        .unwrap();
        assert_eq!(t.get("x"), Some("1"));
    }

    #[test]
    fn problems_name_the_file_and_line() {
        let d = tmp("bad");
        let err = LookupTable::load(
            "t",
            &LookupSpec {
                file: "none.csv".into(),
                ..Default::default()
            },
            &d,
        )
        .unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("none.csv"),
            "{err}"
        );
        write(&d, "dup.csv", "k,v\na,1\nb,2\na,3\n");
        let err = LookupTable::load(
            "t",
            &LookupSpec {
                file: "dup.csv".into(),
                ..Default::default()
            },
            &d,
        )
        .unwrap_err();
        assert!(
            err.contains("line 4") && err.contains("\"a\" is listed twice"),
            "{err}"
        );
        let spec = LookupSpec {
            file: "dup.csv".into(),
            value: Some("nope".into()),
            ..Default::default()
        };
        let err = LookupTable::load("t", &spec, &d).unwrap_err();
        assert!(
            err.contains("no value column \"nope\" (its columns: k, v)"),
            "{err}"
        );
    }
}
