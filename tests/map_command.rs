//! `nzela map`: the reference mappings run by the real binary on real and
//! built messages; outputs checked against the official schemas with xmllint.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

fn asycuda() -> PathBuf {
    mapping(ASYCUDA_MAPPING)
}

fn ubl() -> PathBuf {
    mapping(UBL_MAPPING)
}

/// `order` through `mapping` on standard input; the XML printed, which must
/// validate against `xsd`.
fn map_valid(mapping: &Path, order: &Value, xsd: &str) -> String {
    let run = map_stdin(mapping, order.to_string().as_bytes());
    let xml = run.ok().to_owned();
    assert_valid(xsd, &xml);
    xml
}

/// `order` through `mapping`: must fail with exit 1 and print nothing on
/// stdout; returns stderr.
fn map_fails(mapping: &Path, input: &[u8]) -> String {
    let run = map_stdin(mapping, input);
    run.assert_code(1);
    assert!(
        run.stdout.is_empty(),
        "a failed mapping printed a result:\n{}",
        run.stdout
    );
    assert!(
        !run.stderr.trim().is_empty(),
        "a failed mapping said nothing on stderr"
    );
    run.stderr
}

/// The sample order with its items replaced by `items`.
fn order_with_items(items: Vec<Value>) -> Value {
    let mut order = sample_order();
    order["order"]["items"] = Value::Array(items);
    order
}

/// A plausible goods line, varied by `i`.
fn item(i: u64) -> Value {
    let unit = ["BAG", "box", "Carton", "drum"][(i % 4) as usize];
    json!({
        "line": i + 1,
        "sku": format!("SKU-{i:04}"),
        "description": format!("Marchandise n° {i}, qualité export"),
        "hs_code": format!("{:06}", 90_111 + i * 7),
        "quantity": 1 + (i * 37) % 500,
        "unit": unit,
        "unit_price": format!("{}.{:02}", 1 + (i * 13) % 9000, (i * 7) % 100),
        "net_weight_kg": format!("{}.{:03}", 5 + i, (i * 11) % 1000),
        "gross_weight_kg": format!("{}.{:03}", 6 + i, (i * 17) % 1000),
        "origin_country": "CG",
    })
}

/// Expected totals of an order's items: (Value_details, packages, gross weight).
fn expected_totals(order: &Value) -> (String, u64, String) {
    let items = order["order"]["items"].as_array().unwrap();
    let amount: i128 = items
        .iter()
        .map(|it| {
            item_cents(
                &decimal_text(&it["unit_price"]),
                it["quantity"].as_u64().unwrap(),
            )
        })
        .sum();
    let packages = items
        .iter()
        .map(|it| it["quantity"].as_u64().unwrap())
        .sum();
    let grams: i128 = items
        .iter()
        .map(|it| scaled(&decimal_text(&it["gross_weight_kg"]), 3))
        .sum();
    (unscaled(amount, 2), packages, unscaled(grams, 3))
}

/// Checks an ASYCUDA declaration's counts, totals and per-item amounts
/// against the order, computed here with integer arithmetic.
fn assert_asycuda_totals(xml: &str, order: &Value) {
    let items = order["order"]["items"].as_array().unwrap();
    let (amount, packages, weight) = expected_totals(order);
    assert_eq!(
        text_of(xml, "Total_number_of_items"),
        items.len().to_string()
    );
    assert_eq!(
        text_of(xml, "Total_number_of_packages"),
        packages.to_string()
    );
    assert_eq!(text_of(xml, "Value_details"), amount);
    assert_eq!(text_of(xml, "Total_gross_weight"), weight);
    let gs = elements(xml, "Gs_Invoice");
    assert_eq!(gs.len(), 1);
    assert_eq!(gs[0].one("Amount_foreign_currency").text(), amount);
    let out_items = elements(xml, "Item");
    assert_eq!(out_items.len(), items.len(), "one <Item> per order item");
    for (n, (out, it)) in out_items.iter().zip(items).enumerate() {
        let cents = item_cents(
            &decimal_text(&it["unit_price"]),
            it["quantity"].as_u64().unwrap(),
        );
        assert_eq!(
            out.one("Amount_foreign_currency").text(),
            unscaled(cents, 2),
            "Item[{n}] amount"
        );
        assert_eq!(
            out.one("Number_of_packages").text(),
            it["quantity"].to_string(),
            "Item[{n}] packages"
        );
        assert_eq!(
            out.one("Commodity_code").text(),
            it["hs_code"].as_str().unwrap(),
            "Item[{n}] HS code"
        );
    }
}

#[test]
fn sample_order_gives_the_example_asycuda_declaration() {
    let run = map_file(&asycuda(), &repo_file(SAMPLE_ORDER));
    let xml = run.ok();
    assert_valid(ASYCUDA_XSD, xml);
    let example = std::fs::read_to_string(repo_file(
        "tests/fixtures/schemas/asycuda-export/example-export-declaration.xml",
    ))
    .unwrap();
    assert_eq!(
        squeeze_xml(xml),
        squeeze_xml(&example),
        "the declaration differs from the example"
    );
}

#[test]
fn sample_order_gives_a_valid_ubl_order() {
    let run = map_file(&ubl(), &repo_file(SAMPLE_ORDER));
    let xml = run.ok();
    assert_valid(UBL_ORDER_XSD, xml);

    // The order's own cbc:ID is the first one, right after UBLVersionID.
    assert_eq!(text_of(xml, "cbc:UBLVersionID"), "2.1");
    assert_eq!(texts(xml, "cbc:ID")[0], "GB-2026-0001842");
    assert!(
        xml.find("<cbc:UBLVersionID>").unwrap() < xml.find("<cbc:ID>").unwrap(),
        "cbc:ID must follow cbc:UBLVersionID"
    );

    let lines = elements(xml, "cac:OrderLine");
    assert_eq!(lines.len(), 2);
    let expected = [("120", "22260.00", "1"), ("80", "16800.00", "2")];
    for (line, (qty, amount, id)) in lines.iter().zip(expected) {
        let item = line.one("cac:LineItem");
        assert_eq!(item.find("cbc:ID")[0].text(), id);
        let q = item.one("cbc:Quantity");
        assert_eq!(q.text(), qty);
        assert_eq!(q.attr("unitCode").as_deref(), Some("BG"));
        // The line's own amount, not the price's.
        let a = item.find("cbc:LineExtensionAmount");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].text(), amount);
        assert_eq!(a[0].attr("currencyID").as_deref(), Some("USD"));
    }
    let total = elements(xml, "cac:AnticipatedMonetaryTotal");
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].one("cbc:LineExtensionAmount").text(), "39060.00");
    assert_eq!(total[0].one("cbc:PayableAmount").text(), "39060.00");
}

#[test]
fn assessment_notice_gives_the_momo_request() {
    let run = map_file(&mapping(MOMO_MAPPING), &repo_file(SAMPLE_ASSESSMENT));
    let got: Value = serde_json::from_str(run.ok()).expect("the output is JSON");
    let expected = json!({
        "amount": "1987500",
        "currency": "XAF",
        "externalId": "CGPNR-2026-L-3307",
        "payer": {"partyIdType": "MSISDN", "partyId": "242061234567"},
        "payerMessage": "Droits de douane E 4821 du 2026-11-21",
        "payeeNote": "GB-2026-0001842",
    });
    assert_eq!(got, expected);
}

#[test]
fn input_from_standard_input() {
    let m = asycuda();
    let m = m.to_str().unwrap();
    let sample = std::fs::read(repo_file(SAMPLE_ORDER)).unwrap();
    let from_file = map_file(&asycuda(), &repo_file(SAMPLE_ORDER));
    let expected = from_file.ok();
    assert!(expected.contains("<Value_details>39060.00</Value_details>"));

    let no_arg = run_nzela(&["map", "--mapping", m], Some(&sample), None);
    assert_eq!(
        no_arg.ok(),
        expected,
        "without INPUT, the message is read from stdin"
    );
    let dash = run_nzela(&["map", "--mapping", m, "-"], Some(&sample), None);
    assert_eq!(
        dash.ok(),
        expected,
        "with INPUT `-`, the message is read from stdin"
    );

    let momo = mapping(MOMO_MAPPING);
    let notice = std::fs::read(repo_file(SAMPLE_ASSESSMENT)).unwrap();
    let run = run_nzela(&["map", "-m", momo.to_str().unwrap()], Some(&notice), None);
    let got: Value = serde_json::from_str(run.ok()).unwrap();
    assert_eq!(got["externalId"], "CGPNR-2026-L-3307");
}

#[test]
fn an_unreadable_input_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-order.json");
    let run = map_file(&asycuda(), &missing);
    run.assert_code(1);
    assert!(
        run.stderr.contains("no-such-order.json"),
        "stderr: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
}

#[test]
fn order_with_one_item() {
    let order = order_with_items(vec![item(3)]);
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_asycuda_totals(&xml, &order);
    assert_eq!(text_of(&xml, "Total_number_of_items"), "1");
    let (amount, _, _) = expected_totals(&order);
    assert_eq!(amount, unscaled(item_cents("40.21", 112), 2));

    let xml = map_valid(&ubl(), &order, UBL_ORDER_XSD);
    assert_eq!(elements(&xml, "cac:OrderLine").len(), 1);
    let total = elements(&xml, "cac:AnticipatedMonetaryTotal");
    assert_eq!(total[0].one("cbc:PayableAmount").text(), amount);
}

#[test]
fn order_with_200_items() {
    let order = order_with_items((0..200).map(item).collect());
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_eq!(text_of(&xml, "Total_number_of_items"), "200");
    assert_eq!(elements(&xml, "Item").len(), 200);
    assert_asycuda_totals(&xml, &order);

    let xml = map_valid(&ubl(), &order, UBL_ORDER_XSD);
    let lines = elements(&xml, "cac:OrderLine");
    assert_eq!(lines.len(), 200);
    let (amount, _, _) = expected_totals(&order);
    let total = elements(&xml, "cac:AnticipatedMonetaryTotal");
    assert_eq!(total[0].one("cbc:LineExtensionAmount").text(), amount);
    for (n, line) in lines.iter().enumerate() {
        let it = &order["order"]["items"][n];
        let cents = item_cents(
            it["unit_price"].as_str().unwrap(),
            it["quantity"].as_u64().unwrap(),
        );
        let li = line.one("cac:LineItem");
        assert_eq!(
            li.find("cbc:LineExtensionAmount")[0].text(),
            unscaled(cents, 2),
            "line {n}"
        );
        assert_eq!(
            li.one("cbc:Quantity").text(),
            it["quantity"].to_string(),
            "line {n}"
        );
    }
}

#[test]
fn special_characters_survive_in_names_and_descriptions() {
    let seller = "  Ets \"Le Bon\" & Fils <Export> l'Étoile, ç ñ 中文 ";
    let buyer = "Société <Générale> & 'Cie' \"中文贸易\" ñandú";
    let d1 = "Café > thé & \"cacao\" <bio> 'AAA' ç ñ 中文";
    let d2 = "a]]>b <![CDATA[x]]> &amp; &#65; literal";
    let mut order = sample_order();
    order["order"]["seller"]["company"] = json!(seller);
    order["order"]["buyer"]["company"] = json!(buyer);
    order["order"]["items"][0]["description"] = json!(d1);
    order["order"]["items"][1]["description"] = json!(d2);

    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_eq!(text_of(&xml, "Exporter_name"), seller.trim());
    assert_eq!(text_of(&xml, "Consignee_name"), buyer);
    assert_eq!(texts(&xml, "Commercial_Description"), [d1, d2]);

    let xml = map_valid(&ubl(), &order, UBL_ORDER_XSD);
    let seller_party = elements(&xml, "cac:SellerSupplierParty");
    assert_eq!(
        seller_party[0].one("cac:PartyName").one("cbc:Name").text(),
        seller.trim()
    );
    assert_eq!(
        seller_party[0].one("cbc:RegistrationName").text(),
        seller.trim()
    );
    let buyer_party = elements(&xml, "cac:BuyerCustomerParty");
    assert_eq!(
        buyer_party[0].one("cac:PartyName").one("cbc:Name").text(),
        buyer
    );
    assert_eq!(texts(&xml, "cbc:Description"), [d1, d2]);
}

#[test]
fn large_amounts_are_exact() {
    let mut order = sample_order();
    order["order"]["items"] = json!([order["order"]["items"][0].clone()]);
    order["order"]["items"][0]["unit_price"] = json!("1234567.89");
    order["order"]["items"][0]["quantity"] = json!(3);
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_eq!(text_of(&xml, "Value_details"), "3703703.67");
    let item = elements(&xml, "Item");
    assert_eq!(item[0].one("Amount_foreign_currency").text(), "3703703.67");

    let xml = map_valid(&ubl(), &order, UBL_ORDER_XSD);
    let line = elements(&xml, "cac:OrderLine");
    assert_eq!(
        line[0].one("cac:LineItem").find("cbc:LineExtensionAmount")[0].text(),
        "3703703.67"
    );
    assert_eq!(text_of(&xml, "cbc:PayableAmount"), "3703703.67");
}

#[test]
fn item_amounts_round_half_to_even_and_totals_add_rounded_amounts() {
    // 0.005 → 0.00 (half to even), three times: 0.00, not round(0.015) = 0.02.
    // 0.125 × 3 = 0.375 → 0.38; 2.675 → 2.68; 0.3333 × 3 = 0.9999 → 1.00.
    let prices = [
        ("0.005", 1),
        ("0.005", 1),
        ("0.005", 1),
        ("0.125", 3),
        ("2.675", 1),
        ("0.3333", 3),
        ("0.665", 1),
    ];
    let base = sample_order()["order"]["items"][0].clone();
    let items = prices
        .iter()
        .map(|(p, q)| {
            let mut it = base.clone();
            it["unit_price"] = json!(p);
            it["quantity"] = json!(q);
            it
        })
        .collect();
    let order = order_with_items(items);
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    let amounts: Vec<String> = elements(&xml, "Item")
        .iter()
        .map(|i| i.one("Amount_foreign_currency").text())
        .collect();
    assert_eq!(
        amounts,
        ["0.00", "0.00", "0.00", "0.38", "2.68", "1.00", "0.66"]
    );
    assert_eq!(text_of(&xml, "Value_details"), "4.72");
    assert_asycuda_totals(&xml, &order);
}

#[test]
fn a_missing_niu_is_named() {
    let mut order = sample_order();
    order["order"]["seller"]
        .as_object_mut()
        .unwrap()
        .remove("niu");
    let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
    assert!(
        stderr.contains(
            "field Traders.Exporter.Exporter_code: required field order.seller.niu is missing"
        ),
        "stderr: {stderr}"
    );
}

#[test]
fn a_thousand_items_are_refused() {
    let order = order_with_items((0..1000).map(item).collect());
    let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
    assert!(
        stderr.contains("Total_number_of_items") || stderr.contains("Item"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("999"), "the limit is named: {stderr}");
    assert!(stderr.contains("1000"), "the count is named: {stderr}");
}

#[test]
fn an_hs_code_of_7_digits_is_refused() {
    let mut order = sample_order();
    order["order"]["items"][1]["hs_code"] = json!("1801001");
    let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
    assert!(
        stderr.contains("Item[1].Tarification.HScode.Commodity_code"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("1801001"), "the value is named: {stderr}");
}

#[test]
fn a_description_of_141_characters_is_refused() {
    let mut order = sample_order();
    let long: String = "é".repeat(141);
    order["order"]["items"][0]["description"] = json!(long);
    let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
    assert!(
        stderr.contains("Item[0].Goods_description.Commercial_Description"),
        "stderr: {stderr}"
    );
    assert!(stderr.contains("141"), "the length is named: {stderr}");

    // 140 characters (280 bytes in UTF-8) are fine.
    order["order"]["items"][0]["description"] = json!("é".repeat(140));
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_eq!(texts(&xml, "Commercial_Description")[0], "é".repeat(140));
}

#[test]
fn a_unit_not_in_the_table_is_refused() {
    let mut order = sample_order();
    order["order"]["items"][1]["unit"] = json!("jerrycan");
    let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
    assert!(
        stderr.contains("Item[1].Packages.Kind_of_packages_code"),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains("package_kind"),
        "the table is named: {stderr}"
    );
    assert!(
        stderr.contains("\"JERRYCAN\""),
        "the value is named: {stderr}"
    );
}

#[test]
fn malformed_json_names_the_position() {
    let stderr = map_fails(&asycuda(), br#"{"order": [}"#);
    assert!(stderr.contains("line 1, column"), "stderr: {stderr}");
    assert!(
        stderr.contains("line 1, column 12"),
        "the column of the `}}`: {stderr}"
    );
}

#[test]
fn an_entity_bomb_is_refused() {
    let mut bomb =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE ASYCUDA [\n <!ENTITY lol \"lol\">\n");
    for n in 2..=9 {
        let prev = if n == 2 {
            "lol".to_owned()
        } else {
            format!("lol{}", n - 1)
        };
        bomb.push_str(&format!(
            " <!ENTITY lol{n} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    bomb.push_str(
        "]>\n<ASYCUDA><Global_taxes><Total_taxes>&lol9;</Total_taxes></Global_taxes></ASYCUDA>\n",
    );
    let stderr = map_fails(&mapping(MOMO_MAPPING), bomb.as_bytes());
    assert!(
        stderr.to_lowercase().contains("entit"),
        "the error mentions entities: {stderr}"
    );
}

#[test]
fn invalid_utf8_names_the_position() {
    let mut input = br#"{"order": {"order_id": "A"#.to_vec();
    input.push(0xFF);
    input.extend_from_slice(br#""}}"#);
    let stderr = map_fails(&asycuda(), &input);
    assert!(stderr.contains("UTF-8"), "stderr: {stderr}");
    assert!(
        stderr.contains("line 1, column 26") || stderr.contains("offset 25"),
        "the position of byte 0xFF is named: {stderr}"
    );

    let mut xml = b"<ASYCUDA>\n<Global_taxes>".to_vec();
    xml.extend_from_slice(&[0xC3, 0x28]);
    xml.extend_from_slice(b"</Global_taxes></ASYCUDA>");
    let stderr = map_fails(&mapping(MOMO_MAPPING), &xml);
    assert!(stderr.contains("UTF-8"), "stderr: {stderr}");
    assert!(
        stderr.contains("line 2"),
        "the line of the bad byte is named: {stderr}"
    );
}

#[test]
fn a_mapping_file_with_errors_reports_each_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    let text = "\
name: broken
input: json
output: json
lookups:
  units: lookups/no-such-table.csv
fields:
  a: { path: order.order_id, colour: red }
  b: { path: a..b }
  c: { expr: \"price * (\" }
";
    std::fs::write(&file, text).unwrap();
    let run = map_file(&file, &repo_file(SAMPLE_ORDER));
    run.assert_code(78);
    assert!(run.stdout.is_empty());
    let name = file.to_str().unwrap();
    // (line, words the message must hold)
    let expected = [
        (5, &["no-such-table.csv"][..]),
        (7, &["colour"][..]),
        (8, &["a..b"][..]),
        (9, &["price * (", "compile"][..]),
    ];
    for (line, words) in expected {
        let prefix = format!("{name}:{line}:");
        let found = run.stderr.lines().find(|l| {
            l.strip_prefix(&prefix)
                .and_then(|rest| rest.split_once(": "))
                .is_some_and(|(col, msg)| {
                    col.parse::<usize>().is_ok_and(|c| c >= 1)
                        && words.iter().all(|w| msg.contains(w))
                })
        });
        assert!(
            found.is_some(),
            "no `{prefix}COL: ...{words:?}...` line in stderr:\n{}",
            run.stderr
        );
    }
    let positioned = run
        .stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{name}:")))
        .count();
    assert_eq!(positioned, 4, "exactly the four errors:\n{}", run.stderr);
}

#[test]
fn characters_xml_cannot_hold_never_give_a_broken_document() {
    // XML 1.0 has no way to write U+0001 (a control character) or the
    // noncharacters U+FFFE and U+FFFF, not even as character references:
    // a declaration holding one is rejected by every XML reader. Such a
    // name must be refused with an error naming the character.
    for bad in ['\u{1}', '\u{FFFE}', '\u{FFFF}'] {
        let mut order = sample_order();
        order["order"]["seller"]["company"] = json!(format!("Mabiala{bad}Fils"));
        let run = map_stdin(&asycuda(), order.to_string().as_bytes());
        let code = format!("U+{:04X}", u32::from(bad));
        if run.code == Some(0) {
            match xmllint(&repo_file(ASYCUDA_XSD), run.stdout.as_bytes()) {
                Ok(()) => {}
                Err(report) => panic!(
                    "a name holding {code} gave a declaration no XML reader accepts:\n{report}"
                ),
            }
        } else {
            run.assert_code(1);
            assert!(
                run.stderr.contains(&code),
                "the error names {code}: {}",
                run.stderr
            );
            assert!(
                run.stderr.contains("Exporter_name"),
                "the error names the field: {}",
                run.stderr
            );
        }
    }
}

#[test]
fn at_most_999_items_and_at_least_one() {
    // 999 is the schema's maxOccurs: still a declaration.
    let order = order_with_items((0..999).map(item).collect());
    let xml = map_valid(&asycuda(), &order, ASYCUDA_XSD);
    assert_eq!(text_of(&xml, "Total_number_of_items"), "999");
    assert_asycuda_totals(&xml, &order);

    for items in [json!([]), Value::Null] {
        let mut order = sample_order();
        order["order"]["items"] = items;
        let stderr = map_fails(&asycuda(), order.to_string().as_bytes());
        assert!(
            stderr.contains("Total_number_of_items") || stderr.contains("Item"),
            "stderr: {stderr}"
        );
        let stderr = map_fails(&ubl(), order.to_string().as_bytes());
        assert!(stderr.contains("cac:OrderLine"), "stderr: {stderr}");
    }
}

#[test]
fn a_timestamp_with_an_offset_dates_the_ubl_order() {
    // Brazzaville is at UTC+01:00: webhooks may send local time with its
    // offset. IssueDate and IssueTime must then give the same instant,
    // either in the sender's offset or in UTC.
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("2026-11-18T16:02:47Z", &[("2026-11-18", "16:02:47+00:00")]),
        (
            "2026-11-18T16:02:47.250Z",
            &[("2026-11-18", "16:02:47+00:00")],
        ),
        (
            "2026-11-18T16:02:47+01:00",
            &[
                ("2026-11-18", "16:02:47+01:00"),
                ("2026-11-18", "15:02:47+00:00"),
            ],
        ),
        (
            "2026-11-18T23:30:00-05:00",
            &[
                ("2026-11-18", "23:30:00-05:00"),
                ("2026-11-19", "04:30:00+00:00"),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (created_at, accepted) in cases {
        let mut order = sample_order();
        order["order"]["created_at"] = json!(created_at);
        let run = map_stdin(&ubl(), order.to_string().as_bytes());
        if run.code != Some(0) {
            failures.push(format!(
                "{created_at}: exit {:?}: {}",
                run.code,
                run.stderr.trim()
            ));
            continue;
        }
        assert_valid(UBL_ORDER_XSD, &run.stdout);
        let got = (
            text_of(&run.stdout, "cbc:IssueDate"),
            text_of(&run.stdout, "cbc:IssueTime"),
        );
        if !accepted
            .iter()
            .any(|(d, t)| (got.0.as_str(), got.1.as_str()) == (*d, *t))
        {
            failures.push(format!(
                "{created_at}: IssueDate {} IssueTime {}, expected one of {accepted:?}",
                got.0, got.1
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "created_at not dated correctly:\n{}",
        failures.join("\n")
    );
}
