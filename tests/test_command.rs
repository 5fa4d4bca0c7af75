//! `nzela test`: the tests written in mapping files, run by the real binary.

mod common;

use std::path::Path;

use common::*;

/// The numbers of the summary line `N passed, M failed[, ...]`, the last
/// line of stdout.
fn summary(stdout: &str) -> (usize, usize, &str) {
    let last = stdout.lines().last().unwrap_or_default();
    let parse = || -> Option<(usize, usize)> {
        let (passed, rest) = last.split_once(" passed, ")?;
        let failed = rest.split(" failed").next()?;
        Some((passed.parse().ok()?, failed.parse().ok()?))
    };
    let (passed, failed) =
        parse().unwrap_or_else(|| panic!("no summary line at the end of:\n{stdout}"));
    (passed, failed, last)
}

/// A copy of the ASYCUDA mapping with its lookups and test files in a
/// fresh folder.
fn copy_of_asycuda_mapping() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(mapping(ASYCUDA_MAPPING), dir.path().join(ASYCUDA_MAPPING)).unwrap();
    for sub in ["lookups", "tests"] {
        let from = root().join("mappings").join(sub);
        let to = dir.path().join(sub);
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

fn test_in(path: &Path) -> Run {
    run_nzela(&["test", path.to_str().unwrap()], None, None)
}

#[test]
fn the_repository_mappings_pass_their_tests() {
    // No argument: `mappings/` under the current folder.
    let run = run_nzela(&["test"], None, Some(&root()));
    let out = run.ok();
    let (passed, failed, line) = summary(out);
    assert_eq!(failed, 0, "{out}");
    assert!(
        passed >= 11,
        "at least the 11 tests of the reference mappings: {line}"
    );
    assert_eq!(line, format!("{passed} passed, 0 failed"));
    let oks = out.lines().filter(|l| l.starts_with("ok   ")).count();
    assert_eq!(oks, passed, "one `ok` line per passed test:\n{out}");
    assert!(!out.contains("FAIL"), "{out}");
    for name in [ASYCUDA_MAPPING, UBL_MAPPING, MOMO_MAPPING] {
        assert!(
            out.contains(&format!("mappings/{name}: ")),
            "the tests of {name} ran:\n{out}"
        );
    }
    assert!(out.contains(&format!(
        "ok   mappings/{ASYCUDA_MAPPING}: the sample order gives the example declaration"
    )));
}

#[test]
fn a_single_mapping_file_can_be_tested() {
    let run = run_nzela(
        &["test", &format!("mappings/{MOMO_MAPPING}")],
        None,
        Some(&root()),
    );
    let out = run.ok();
    assert_eq!(summary(out).2, "3 passed, 0 failed", "{out}");
}

#[test]
fn an_altered_expected_output_fails_with_a_diff() {
    let dir = copy_of_asycuda_mapping();
    let expected = dir.path().join("tests/order-paid.asycuda.xml");
    let text = std::fs::read_to_string(&expected).unwrap();
    assert!(text.contains("<Sad_flow>E</Sad_flow>"));
    std::fs::write(
        &expected,
        text.replace("<Sad_flow>E</Sad_flow>", "<Sad_flow>X</Sad_flow>"),
    )
    .unwrap();

    // `an_unaltered_copy_passes` shows the failure comes from the change.
    let run = test_in(dir.path());
    run.assert_code(1);
    let out = &run.stdout;
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert_eq!(fails.len(), 1, "exactly one failing test:\n{out}");
    assert!(
        fails[0].ends_with(": the sample order gives the example declaration"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim() == "ASYCUDA.Property.Sad_flow: expected \"X\", got \"E\""),
        "a diff line names the path of the difference:\n{out}"
    );
    let (passed, failed, _) = summary(out);
    assert_eq!(failed, 1, "{out}");
    assert!(passed >= 5, "the other tests still pass:\n{out}");
}

#[test]
fn an_unaltered_copy_passes() {
    let dir = copy_of_asycuda_mapping();
    let run = test_in(dir.path());
    let out = run.ok();
    let (passed, failed, _) = summary(out);
    assert_eq!(failed, 0);
    assert!(passed >= 6, "{out}");
}

#[test]
fn an_altered_expected_error_fails() {
    let dir = copy_of_asycuda_mapping();
    let file = dir.path().join(ASYCUDA_MAPPING);
    let text = std::fs::read_to_string(&file).unwrap();
    let needle = "required field order.seller.niu is missing";
    assert!(text.contains(needle));
    std::fs::write(
        &file,
        text.replace(needle, "required field order.seller.rccm is missing"),
    )
    .unwrap();
    let run = test_in(dir.path());
    run.assert_code(1);
    let out = &run.stdout;
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL ") && l.ends_with(": the exporter's NIU is required")),
        "{out}"
    );
    assert!(
        out.contains("order.seller.niu"),
        "the detail shows the actual error:\n{out}"
    );
    assert_eq!(summary(out).1, 1, "{out}");
}

#[test]
fn a_mapping_that_does_not_load_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "name: broken\ninput: json\noutput: json\nfields:\n  a: { path: a..b }\n",
    )
    .unwrap();
    // A good mapping next to it still runs.
    std::fs::write(
        dir.path().join("good.yml"),
        "name: good\ninput: json\noutput: json\nfields:\n  b: a\ntests:\n  - name: copies a\n    input: { text: '{\"a\": 1}' }\n    expect: { text: '{\"b\": 1}' }\n",
    )
    .unwrap();
    let run = test_in(dir.path());
    run.assert_code(1);
    let out = &run.stdout;
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL ") && l.contains("broken.yaml")),
        "{out}\n{}",
        run.stderr
    );
    assert!(
        out.contains("broken.yaml:5:"),
        "the load error has its position:\n{out}"
    );
    assert!(
        out.contains("ok   ") && out.contains("good.yml: copies a"),
        "the good mapping ran:\n{out}"
    );
    let (passed, failed, line) = summary(out);
    assert_eq!((passed, failed), (1, 0), "{out}");
    assert!(line.ends_with(", 1 mapping file(s) did not load"), "{line}");
    assert!(line.contains("did not load"), "{line}");
}

#[test]
fn a_folder_without_mappings_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a mapping").unwrap();
    std::fs::write(dir.path().join("data.json"), "{}").unwrap();
    let run = test_in(dir.path());
    run.assert_code(1);
    assert!(
        !run.stdout.contains(" passed, "),
        "no summary of zero tests as if all was well:\n{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("no mapping files"),
        "stderr: {}",
        run.stderr
    );
}

#[test]
fn a_missing_path_fails() {
    let dir = tempfile::tempdir().unwrap();
    let run = test_in(&dir.path().join("nowhere"));
    run.assert_code(1);
    assert!(
        run.stderr.contains("nowhere"),
        "the path is named: {}",
        run.stderr
    );
}
