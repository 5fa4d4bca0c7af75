//! Marketplace orders nobody wrote by hand: generated orders through the
//! ASYCUDA and UBL mappings must give documents that the official schemas
//! accept, with amounts computed here with integer arithmetic; orders with
//! one field made invalid must give an error naming that field, never a
//! document.
//!
//! The mappings are compiled once and run in-process (the same code the
//! binary runs), and each output is checked with xmllint.

mod common;

use std::sync::LazyLock;

use common::*;
use nzela_core::mapping::Mapping;
use proptest::prelude::*;
use serde_json::{Value, json};

static ASYCUDA: LazyLock<Mapping> =
    LazyLock::new(|| Mapping::load(mapping(ASYCUDA_MAPPING)).expect("the ASYCUDA mapping loads"));
static UBL: LazyLock<Mapping> =
    LazyLock::new(|| Mapping::load(mapping(UBL_MAPPING)).expect("the UBL mapping loads"));

/// `unit,code` of UN/ECE Rec. 21 as the mappings' lookup table has them.
static PACKAGE_KINDS: LazyLock<Vec<(String, String)>> =
    LazyLock::new(|| table("unece-rec21-package-kinds.csv"));
static TRANSPORT_MODES: LazyLock<Vec<(String, String)>> =
    LazyLock::new(|| table("unece-rec19-transport-modes.csv"));

fn table(file: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("mappings/lookups").join(file)).unwrap();
    let rows: Vec<_> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split(',');
            (
                cols.next().unwrap().to_owned(),
                cols.next().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(!rows.is_empty() && rows.iter().all(|(k, _)| k == k.trim()));
    rows
}

fn code_of(table: &[(String, String)], key: &str) -> String {
    table
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, c)| c.clone())
        .expect("key from the table")
}

// ---------------------------------------------------------------- strategies

/// Pieces of company names and descriptions: words, XML's special
/// characters, quotes, accents, other scripts, emoji, inner spaces.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9]{1,12}",
        2 => Just(" ".to_owned()),
        1 => prop::sample::select(vec![
            "&", "<", ">", "\"", "'", "]]>", "<![CDATA[", "&amp;", "&#38;", "<b>", "--", "?>", "=",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "é", "è", "ç", "à", "ô", "É", "ñ", "ü", "ß", "Ø", "œ", "中文", "贸易", "Ελλάδα", "Ω", "№", "€", "«", "»",
        ])
        .prop_map(str::to_owned),
        1 => prop::sample::select(vec!["🚢", "☕", "🍫", "👍🏽", "🇨🇬", "𝄞"]).prop_map(str::to_owned),
        // Inner whitespace and invisible characters that XML 1.0 can hold:
        // tab, line ends (a CR must survive the XML reader's line-end
        // normalization), no-break and zero-width spaces, DEL, NEL.
        1 => prop::sample::select(vec!["\t", "\n", "\r\n", "\r", "\u{a0}", "\u{200b}", "\u{7f}", "\u{85}"])
            .prop_map(str::to_owned),
        1 => "[a-zé]{20,45}",
    ]
}

/// Whitespace around a value, which the mappings trim.
fn padding() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec![" ", "  ", "\t", "\n"]), 0..=2)
        .prop_map(|v| v.concat())
}

/// Text of 1 to 140 characters once trimmed, as sent (padded).
fn text() -> impl Strategy<Value = String> {
    (padding(), prop::collection::vec(piece(), 1..=50), padding()).prop_map(
        |(left, pieces, right)| {
            let joined: String = pieces.concat().chars().take(140).collect();
            let core = match joined.trim() {
                "" => "x".to_owned(),
                t => t.to_owned(),
            };
            format!("{left}{core}{right}")
        },
    )
}

/// A decimal written with 0 to `max_decimals` decimals.
fn decimal(max_int: u64, max_decimals: u32) -> impl Strategy<Value = String> {
    (0..=max_int, 0..=max_decimals, 0u64..1000).prop_map(|(int, decimals, frac)| match decimals {
        0 => int.to_string(),
        d => format!("{int}.{:0width$}", frac % 10u64.pow(d), width = d as usize),
    })
}

/// A table key in random case, maybe padded.
fn key_in_random_case(keys: Vec<String>) -> impl Strategy<Value = (String, String)> {
    (
        prop::sample::select(keys),
        prop::collection::vec(any::<bool>(), 16),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(key, upper, pad)| {
            let cased: String = key
                .chars()
                .zip(upper.iter().cycle())
                .map(|(c, &u)| {
                    if u {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                })
                .collect();
            let sent = if pad { format!(" {cased} ") } else { cased };
            (key, sent)
        })
}

/// A weight as it may arrive: text or a JSON number.
#[derive(Debug, Clone)]
struct Weight {
    text: String,
    as_number: bool,
}

fn weight() -> impl Strategy<Value = Weight> {
    (decimal(99_999, 3), any::<bool>()).prop_map(|(text, as_number)| Weight { text, as_number })
}

#[derive(Debug, Clone)]
struct Item {
    sku: Option<String>,
    description: String,
    hs_code: String,
    quantity: u64,
    /// The table key, and how it is written in the order.
    unit: (String, String),
    unit_price: String,
    net: Weight,
    gross: Weight,
    origin: String,
}

prop_compose! {
    fn item()(
        sku in prop::option::of("[A-Z]{3}-[0-9]{2,6}"),
        description in text(),
        hs_code in "[0-9]{6}",
        quantity in 1u64..=10_000,
        unit in key_in_random_case(PACKAGE_KINDS.iter().map(|(k, _)| k.clone()).collect()),
        unit_price in decimal(9_999_999, 2),
        net in weight(),
        gross in weight(),
        origin in "[A-Z]{2}",
    ) -> Item {
        Item { sku, description, hs_code, quantity, unit, unit_price, net, gross, origin }
    }
}

#[derive(Debug, Clone)]
struct Order {
    order_id: String,
    seller: String,
    buyer: String,
    niu: String,
    seller_country: String,
    buyer_country: String,
    destination: String,
    currency: String,
    incoterm: String,
    port: String,
    mode: (String, String),
    vessel: Option<String>,
    items: Vec<Item>,
    /// `created_at` in UTC: the date, the time, and a fraction of a second
    /// that the UBL IssueTime leaves out.
    created_at: (String, String, Option<String>),
    /// Send the JSON with every non-ASCII character as a `\u` escape.
    ascii_json: bool,
}

prop_compose! {
    fn order()(
        order_id in "[A-Z]{2}-[0-9]{4}-[0-9]{7}",
        seller in text(),
        buyer in text(),
        niu in "[A-Z][0-9]{16}",
        countries in ("[A-Z]{2}", "[A-Z]{2}", "[A-Z]{2}"),
        currency in "[A-Z]{3}",
        incoterm in "[A-Z]{3}",
        port in "[A-Z]{2}[A-Z0-9]{3}",
        mode in key_in_random_case(TRANSPORT_MODES.iter().map(|(k, _)| k.clone()).collect()),
        vessel in prop::option::of(text()),
        items in prop::collection::vec(item(), 1..=30),
        created_at in created_at(),
        ascii_json in any::<bool>(),
    ) -> Order {
        let (seller_country, buyer_country, destination) = countries;
        Order {
            order_id, seller, buyer, niu, seller_country, buyer_country, destination, currency, incoterm, port,
            mode, vessel, items, created_at, ascii_json,
        }
    }
}

fn created_at() -> impl Strategy<Value = (String, String, Option<String>)> {
    (
        1970u32..=2099,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
        prop::option::of("[0-9]{1,9}"),
    )
        .prop_map(|(y, mo, d, h, mi, s, fraction)| {
            (
                format!("{y}-{mo:02}-{d:02}"),
                format!("{h:02}:{mi:02}:{s:02}"),
                fraction,
            )
        })
}

fn weight_json(w: &Weight) -> Value {
    if w.as_number {
        serde_json::from_str(&w.text).expect("a JSON number")
    } else {
        json!(w.text)
    }
}

impl Order {
    fn to_json(&self) -> Value {
        let sample = sample_order();
        let mut o = sample.clone();
        let order = &mut o["order"];
        order["order_id"] = json!(self.order_id);
        let (date, time, fraction) = &self.created_at;
        let fraction = fraction
            .as_ref()
            .map(|f| format!(".{f}"))
            .unwrap_or_default();
        order["created_at"] = json!(format!("{date}T{time}{fraction}Z"));
        order["currency"] = json!(self.currency);
        order["incoterm"] = json!(self.incoterm);
        order["port_of_loading"] = json!(self.port);
        order["destination_country"] = json!(self.destination);
        order["seller"]["company"] = json!(self.seller);
        order["seller"]["niu"] = json!(self.niu);
        order["seller"]["country"] = json!(self.seller_country);
        order["buyer"]["company"] = json!(self.buyer);
        order["buyer"]["country"] = json!(self.buyer_country);
        order["shipping"]["mode"] = json!(self.mode.1);
        match &self.vessel {
            Some(v) => order["shipping"]["vessel"] = json!(v),
            None => {
                order["shipping"].as_object_mut().unwrap().remove("vessel");
            }
        }
        let items = self
            .items
            .iter()
            .enumerate()
            .map(|(n, it)| {
                let mut v = json!({
                    "line": n + 1,
                    "description": it.description,
                    "hs_code": it.hs_code,
                    "quantity": it.quantity,
                    "unit": it.unit.1,
                    "unit_price": it.unit_price,
                    "net_weight_kg": weight_json(&it.net),
                    "gross_weight_kg": weight_json(&it.gross),
                    "origin_country": it.origin,
                });
                if let Some(sku) = &it.sku {
                    v["sku"] = json!(sku);
                }
                v
            })
            .collect();
        order["items"] = Value::Array(items);
        o
    }

    fn bytes(&self) -> Vec<u8> {
        to_bytes(&self.to_json(), self.ascii_json)
    }

    /// Value_details: the sum of the rounded item amounts, in cents.
    fn total_cents(&self) -> i128 {
        self.items
            .iter()
            .map(|it| item_cents(&it.unit_price, it.quantity))
            .sum()
    }
}

/// JSON text; with `ascii`, every non-ASCII character written as `\uXXXX`
/// (surrogate pairs beyond the BMP), which a reader must decode back.
fn to_bytes(v: &Value, ascii: bool) -> Vec<u8> {
    let text = v.to_string();
    if !ascii {
        return text.into_bytes();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out.into_bytes()
}

fn run(m: &Mapping, input: &[u8]) -> Result<String, String> {
    m.run(input)
        .map(|out| String::from_utf8(out).expect("the output is UTF-8"))
        .map_err(|e| e.to_string())
}

/// Validates against a schema from the repository; the report on failure.
fn validate(xsd: &str, xml: &str) -> Result<(), TestCaseError> {
    xmllint(&repo_file(xsd), xml.as_bytes())
        .map_err(|report| TestCaseError::fail(format!("{report}\n{xml}")))
}

fn check_asycuda(order: &Order, xml: &str) -> Result<(), TestCaseError> {
    validate(ASYCUDA_XSD, xml)?;
    let total = unscaled(order.total_cents(), 2);
    prop_assert_eq!(text_of(xml, "Value_details"), total.clone());
    let gs = elements(xml, "Gs_Invoice");
    prop_assert_eq!(gs[0].one("Amount_foreign_currency").text(), total);
    prop_assert_eq!(gs[0].one("Currency_code").text(), order.currency.clone());
    prop_assert_eq!(
        text_of(xml, "Total_number_of_items"),
        order.items.len().to_string()
    );
    let packages: u64 = order.items.iter().map(|it| it.quantity).sum();
    prop_assert_eq!(
        text_of(xml, "Total_number_of_packages"),
        packages.to_string()
    );
    let grams: i128 = order.items.iter().map(|it| scaled(&it.gross.text, 3)).sum();
    prop_assert_eq!(text_of(xml, "Total_gross_weight"), unscaled(grams, 3));

    prop_assert_eq!(text_of(xml, "Exporter_name"), order.seller.trim());
    prop_assert_eq!(text_of(xml, "Exporter_code"), order.niu.clone());
    prop_assert_eq!(text_of(xml, "Consignee_name"), order.buyer.trim());
    prop_assert_eq!(
        text_of(xml, "Mode_of_transport"),
        code_of(&TRANSPORT_MODES, &order.mode.0)
    );
    prop_assert_eq!(
        texts(xml, "Identity"),
        order
            .vessel
            .iter()
            .map(|v| v.trim().to_owned())
            .collect::<Vec<_>>()
    );

    let items = elements(xml, "Item");
    prop_assert_eq!(items.len(), order.items.len());
    for (n, (out, it)) in items.iter().zip(&order.items).enumerate() {
        let amount = unscaled(item_cents(&it.unit_price, it.quantity), 2);
        prop_assert_eq!(
            out.one("Amount_foreign_currency").text(),
            amount,
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Number_of_packages").text(),
            it.quantity.to_string(),
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Kind_of_packages_code").text(),
            code_of(&PACKAGE_KINDS, &it.unit.0),
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Commodity_code").text(),
            it.hs_code.clone(),
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Commercial_Description").text(),
            it.description.trim(),
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Gross_weight_itm").text(),
            unscaled(scaled(&it.gross.text, 3), 3),
            "Item[{}]",
            n
        );
        prop_assert_eq!(
            out.one("Net_weight_itm").text(),
            unscaled(scaled(&it.net.text, 3), 3),
            "Item[{}]",
            n
        );
    }
    Ok(())
}

fn check_ubl(order: &Order, xml: &str) -> Result<(), TestCaseError> {
    validate(UBL_ORDER_XSD, xml)?;
    prop_assert_eq!(texts(xml, "cbc:ID")[0].clone(), order.order_id.clone());
    prop_assert_eq!(text_of(xml, "cbc:IssueDate"), order.created_at.0.clone());
    prop_assert_eq!(
        text_of(xml, "cbc:IssueTime"),
        format!("{}+00:00", order.created_at.1)
    );
    let total = elements(xml, "cac:AnticipatedMonetaryTotal");
    prop_assert_eq!(total.len(), 1);
    prop_assert_eq!(
        total[0].one("cbc:PayableAmount").text(),
        unscaled(order.total_cents(), 2)
    );
    let seller = elements(xml, "cac:SellerSupplierParty");
    prop_assert_eq!(
        seller[0].one("cac:PartyName").one("cbc:Name").text(),
        order.seller.trim()
    );
    let buyer = elements(xml, "cac:BuyerCustomerParty");
    prop_assert_eq!(
        buyer[0].one("cac:PartyName").one("cbc:Name").text(),
        order.buyer.trim()
    );
    let lines = elements(xml, "cac:OrderLine");
    prop_assert_eq!(lines.len(), order.items.len());
    for (n, (line, it)) in lines.iter().zip(&order.items).enumerate() {
        let li = line.one("cac:LineItem");
        let amount = li.find("cbc:LineExtensionAmount");
        prop_assert_eq!(
            amount[0].text(),
            unscaled(item_cents(&it.unit_price, it.quantity), 2),
            "line {}",
            n
        );
        prop_assert_eq!(
            amount[0].attr("currencyID"),
            Some(order.currency.clone()),
            "line {}",
            n
        );
        let q = li.one("cbc:Quantity");
        prop_assert_eq!(q.text(), it.quantity.to_string(), "line {}", n);
        prop_assert_eq!(
            q.attr("unitCode"),
            Some(code_of(&PACKAGE_KINDS, &it.unit.0)),
            "line {}",
            n
        );
        prop_assert_eq!(
            li.one("cbc:Description").text(),
            it.description.trim(),
            "line {}",
            n
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_order_gives_valid_declarations(order in order()) {
        let input = order.bytes();
        let asycuda = run(&ASYCUDA, &input).map_err(|e| TestCaseError::fail(format!("ASYCUDA mapping failed: {e}")))?;
        check_asycuda(&order, &asycuda)?;
        let ubl = run(&UBL, &input).map_err(|e| TestCaseError::fail(format!("UBL mapping failed: {e}")))?;
        check_ubl(&order, &ubl)?;
    }
}

/// One field of a valid order made invalid.
#[derive(Debug, Clone)]
enum Flaw {
    HsCode { item: usize, code: String },
    LongDescription { item: usize, text: String },
    UnknownUnit { item: usize, unit: String },
    MissingNiu,
    ZeroQuantity { item: usize },
}

fn flaw() -> impl Strategy<Value = Flaw> {
    let unknown_unit = "[A-Za-z]{2,10}".prop_filter("a unit of the table", |u| {
        !PACKAGE_KINDS.iter().any(|(k, _)| k.eq_ignore_ascii_case(u))
    });
    prop_oneof![
        (
            any::<prop::sample::Index>(),
            prop_oneof!["[0-9]{5}", "[0-9]{7}"]
        )
            .prop_map(|(i, code)| Flaw::HsCode {
                item: i.index(usize::MAX),
                code
            }),
        (any::<prop::sample::Index>(), text(), 1usize..=80).prop_map(|(i, t, extra)| {
            // Longer than 140 characters even once trimmed.
            let core = t.trim();
            let fill = 141usize.saturating_sub(core.chars().count()) + extra;
            Flaw::LongDescription {
                item: i.index(usize::MAX),
                text: format!(" {core}{} ", "é".repeat(fill)),
            }
        }),
        (any::<prop::sample::Index>(), unknown_unit).prop_map(|(i, unit)| Flaw::UnknownUnit {
            item: i.index(usize::MAX),
            unit
        }),
        Just(Flaw::MissingNiu),
        any::<prop::sample::Index>().prop_map(|i| Flaw::ZeroQuantity {
            item: i.index(usize::MAX)
        }),
    ]
}

/// The order with the flaw applied, the target field the error must name,
/// and other words it must hold.
fn flawed(order: &Order, flaw: &Flaw) -> (Value, String, Vec<String>) {
    let mut v = order.to_json();
    let n = order.items.len();
    match flaw {
        Flaw::HsCode { item, code } => {
            let i = item % n;
            v["order"]["items"][i]["hs_code"] = json!(code);
            (
                v,
                format!("Item[{i}].Tarification.HScode.Commodity_code"),
                vec![format!("\"{code}\"")],
            )
        }
        Flaw::LongDescription { item, text } => {
            let i = item % n;
            v["order"]["items"][i]["description"] = json!(text);
            let len = text.trim().chars().count();
            (
                v,
                format!("Item[{i}].Goods_description.Commercial_Description"),
                vec![format!("{len} characters"), "140".into()],
            )
        }
        Flaw::UnknownUnit { item, unit } => {
            let i = item % n;
            v["order"]["items"][i]["unit"] = json!(unit);
            let shown = format!("\"{}\"", unit.to_uppercase());
            (
                v,
                format!("Item[{i}].Packages.Kind_of_packages_code"),
                vec![shown, "package_kind".into()],
            )
        }
        Flaw::MissingNiu => {
            v["order"]["seller"].as_object_mut().unwrap().remove("niu");
            (
                v,
                "Traders.Exporter.Exporter_code".into(),
                vec!["order.seller.niu is missing".into()],
            )
        }
        Flaw::ZeroQuantity { item } => {
            let i = item % n;
            v["order"]["items"][i]["quantity"] = json!(0);
            (
                v,
                format!("Item[{i}].Packages.Number_of_packages"),
                vec!["quantity".into()],
            )
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn an_order_with_one_invalid_field_gives_an_error_naming_it(order in order(), flaw in flaw()) {
        let (value, field, words) = flawed(&order, &flaw);
        let input = to_bytes(&value, order.ascii_json);
        match run(&ASYCUDA, &input) {
            Ok(xml) => prop_assert!(false, "{:?} gave a declaration instead of an error:\n{}", flaw, xml),
            Err(e) => {
                prop_assert!(e.contains(&format!("field {field}: ")), "{:?}: the error does not name {}: {}", flaw, field, e);
                for w in &words {
                    prop_assert!(e.contains(w.as_str()), "{:?}: the error does not mention {}: {}", flaw, w, e);
                }
            }
        }
    }
}

#[test]
fn the_generators_cover_the_tricky_cases() {
    // The strategies above are only worth something if they produce what
    // they claim: check a sample of generated orders once.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut special, mut non_ascii, mut padded, mut long, mut vessel, mut no_vessel) =
        (0, 0, 0, 0, 0, 0);
    for _ in 0..200 {
        let o = order().new_tree(&mut runner).unwrap().current();
        for t in std::iter::once(&o.seller).chain(o.items.iter().map(|i| &i.description)) {
            let core = t.trim();
            assert!(
                (1..=140).contains(&core.chars().count()),
                "bad length: {t:?}"
            );
            special += usize::from(core.contains(['&', '<', '>', '"', '\'']));
            non_ascii += usize::from(!core.is_ascii());
            padded += usize::from(core.len() != t.len());
            long += usize::from(core.chars().count() == 140);
        }
        if o.vessel.is_some() {
            vessel += 1;
        } else {
            no_vessel += 1;
        }
    }
    for (what, count) in [
        ("XML special characters", special),
        ("non-ASCII text", non_ascii),
        ("padded text", padded),
        ("140-character text", long),
        ("orders with a vessel", vessel),
        ("orders without a vessel", no_vessel),
    ] {
        assert!(count >= 5, "the generator rarely makes {what}: {count}");
    }
}
