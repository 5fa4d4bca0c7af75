//! The ASYCUDA export declaration coded by hand for this one conversion:
//! serde_json into typed structs, quick-xml's writer out. The baseline the
//! mapping engine is measured against.

use std::str::FromStr;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;

#[derive(Deserialize)]
struct Webhook {
    order: Order,
}

#[derive(Deserialize)]
struct Order {
    order_id: String,
    currency: String,
    incoterm: String,
    port_of_loading: String,
    destination_country: String,
    buyer: Buyer,
    seller: Seller,
    items: Vec<Item>,
    shipping: Shipping,
}

#[derive(Deserialize)]
struct Buyer {
    company: String,
    country: String,
}

#[derive(Deserialize)]
struct Seller {
    company: String,
    niu: String,
    country: String,
}

#[derive(Deserialize)]
struct Item {
    description: String,
    hs_code: String,
    quantity: u64,
    unit: String,
    unit_price: String,
    net_weight_kg: String,
    gross_weight_kg: String,
    origin_country: String,
}

#[derive(Deserialize)]
struct Shipping {
    mode: String,
    vessel: Option<String>,
}

type W = Writer<Vec<u8>>;
type Res = std::io::Result<()>;

fn leaf(w: &mut W, name: &str, text: &str) -> Res {
    w.create_element(name)
        .write_text_content(BytesText::new(text))?;
    Ok(())
}

/// What an item needs beside its own fields: computed before writing.
struct ItemOut {
    kind: &'static str,
    gross: String,
    net: String,
    amount: String,
}

fn dec(s: &str) -> Result<Decimal, Box<dyn std::error::Error>> {
    Ok(Decimal::from_str(s)?)
}

fn money(d: Decimal) -> String {
    let mut d = d.round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
    d.rescale(2);
    d.to_string()
}

fn weight(d: Decimal) -> String {
    let mut d = d.round_dp_with_strategy(3, RoundingStrategy::MidpointNearestEven);
    d.rescale(3);
    d.to_string()
}

fn package_kind(unit: &str) -> Result<&'static str, Box<dyn std::error::Error>> {
    Ok(match unit.to_ascii_uppercase().as_str() {
        "BAG" => "BG",
        "BOX" => "BX",
        "CARTON" => "CT",
        "CRATE" => "CR",
        "DRUM" => "DR",
        "BALE" => "BL",
        "PALLET" => "PX",
        other => return Err(format!("unknown unit {other}").into()),
    })
}

fn transport_mode(mode: &str) -> Result<&'static str, Box<dyn std::error::Error>> {
    Ok(match mode {
        "sea" => "1",
        "rail" => "2",
        "road" => "3",
        "air" => "4",
        other => return Err(format!("unknown mode {other}").into()),
    })
}

pub fn handwritten(input: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let o = serde_json::from_slice::<Webhook>(input)?.order;
    let mut items = Vec::with_capacity(o.items.len());
    let (mut total, mut gross, mut packages) = (Decimal::ZERO, Decimal::ZERO, 0u64);
    for i in &o.items {
        let a = (dec(&i.unit_price)? * Decimal::from(i.quantity))
            .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
        let g = dec(&i.gross_weight_kg)?;
        total += a;
        gross += g;
        packages += i.quantity;
        items.push(ItemOut {
            kind: package_kind(&i.unit)?,
            gross: weight(g),
            net: weight(dec(&i.net_weight_kg)?),
            amount: money(a),
        });
    }
    let (total, gross, packages) = (money(total), weight(gross), packages.to_string());
    let count = o.items.len().to_string();
    let mode = transport_mode(&o.shipping.mode)?;
    let mut w = Writer::new_with_indent(Vec::with_capacity(4096), b' ', 2);
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.create_element("ASYCUDA")
        .write_inner_content(|w| -> Res {
            w.create_element("Property")
                .write_inner_content(|w| -> Res {
                    leaf(w, "Sad_flow", "E")?;
                    w.create_element("Nbers")
                        .write_inner_content(|w| leaf(w, "Total_number_of_items", &count))?;
                    leaf(w, "Total_number_of_packages", &packages)
                })?;
            w.create_element("Identification")
                .write_inner_content(|w| -> Res {
                    w.create_element("Office_segment")
                        .write_inner_content(|w| {
                            leaf(w, "Customs_clearance_office_code", &o.port_of_loading)
                        })?;
                    w.create_element("Type").write_inner_content(|w| -> Res {
                        leaf(w, "Type_of_declaration", "EX")?;
                        leaf(w, "Declaration_gen_procedure_code", "1")
                    })?;
                    leaf(w, "Commercial_reference_number", &o.order_id)
                })?;
            w.create_element("Traders")
                .write_inner_content(|w| -> Res {
                    w.create_element("Exporter")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Exporter_code", &o.seller.niu)?;
                            leaf(w, "Exporter_name", &o.seller.company)
                        })?;
                    w.create_element("Consignee")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Consignee_name", &o.buyer.company)?;
                            leaf(w, "Consignee_country", &o.buyer.country)
                        })?;
                    Ok(())
                })?;
            w.create_element("General_information")
                .write_inner_content(|w| -> Res {
                    w.create_element("Country")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Export_country_code", &o.seller.country)?;
                            leaf(w, "Destination_country_code", &o.destination_country)
                        })?;
                    leaf(w, "Value_details", &total)
                })?;
            w.create_element("Transport")
                .write_inner_content(|w| -> Res {
                    w.create_element("Means_of_transport")
                        .write_inner_content(|w| -> Res {
                            if let Some(v) = &o.shipping.vessel {
                                leaf(w, "Identity", v)?;
                            }
                            leaf(w, "Mode_of_transport", mode)
                        })?;
                    w.create_element("Delivery_terms")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Code", &o.incoterm)?;
                            leaf(w, "Place", &o.port_of_loading)
                        })?;
                    w.create_element("Place_of_loading")
                        .write_inner_content(|w| leaf(w, "Code", &o.port_of_loading))?;
                    Ok(())
                })?;
            w.create_element("Valuation")
                .write_inner_content(|w| -> Res {
                    w.create_element("Gs_Invoice")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Amount_foreign_currency", &total)?;
                            leaf(w, "Currency_code", &o.currency)
                        })?;
                    leaf(w, "Total_gross_weight", &gross)
                })?;
            for (i, out) in o.items.iter().zip(&items) {
                w.create_element("Item").write_inner_content(|w| -> Res {
                    w.create_element("Packages")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Number_of_packages", &i.quantity.to_string())?;
                            leaf(w, "Kind_of_packages_code", out.kind)
                        })?;
                    w.create_element("Tarification")
                        .write_inner_content(|w| -> Res {
                            w.create_element("HScode")
                                .write_inner_content(|w| leaf(w, "Commodity_code", &i.hs_code))?;
                            leaf(w, "Extended_customs_procedure", "1000")
                        })?;
                    w.create_element("Goods_description")
                        .write_inner_content(|w| -> Res {
                            leaf(w, "Country_of_origin_code", &i.origin_country)?;
                            leaf(w, "Commercial_Description", &i.description)
                        })?;
                    w.create_element("Valuation_item")
                        .write_inner_content(|w| -> Res {
                            w.create_element("Weight_itm")
                                .write_inner_content(|w| -> Res {
                                    leaf(w, "Gross_weight_itm", &out.gross)?;
                                    leaf(w, "Net_weight_itm", &out.net)
                                })?;
                            w.create_element("Item_Invoice")
                                .write_inner_content(|w| -> Res {
                                    leaf(w, "Amount_foreign_currency", &out.amount)?;
                                    leaf(w, "Currency_code", &o.currency)
                                })?;
                            Ok(())
                        })?;
                    Ok(())
                })?;
            }
            Ok(())
        })?;
    Ok(w.into_inner())
}
