//! The broker's own rates, for `bench/amqp.sh`: how fast one client
//! publishes with confirms, consumes with acknowledgements, publishes and
//! consumes at once, and relays (consumes, publishes with confirms,
//! acknowledges), on the same broker and queue type nzela is measured on.
//!
//! ```text
//! amqp_rate publish URL QUEUE COUNT BODY_FILE [IN_FLIGHT]   # persistent, confirmed
//! amqp_rate consume URL QUEUE COUNT [PREFETCH]              # acknowledged one by one
//! amqp_rate pubsub URL QUEUE COUNT BODY_FILE [IN_FLIGHT]    # both at once
//! amqp_rate relay URL FROM TO COUNT [IN_FLIGHT]             # FROM -> TO, confirmed, then acked
//! amqp_rate count URL QUEUE COUNT                          # waits until QUEUE holds COUNT
//! ```
//!
//! `count` measures what another client (nzela) publishes to QUEUE without
//! consuming it: it asks the broker for the queue's length every 10 ms (a
//! passive declare), so that the measuring costs the machine next to
//! nothing, as for `publish`. Timed from the first message seen to the
//! last.
//!
//! `pubsub` is the loop of `rabbitmq-perf-test` with `--confirm`: one
//! producer publishes (persistent, confirmed, IN_FLIGHT awaiting their
//! confirm) while one consumer, on a connection of its own, consumes and
//! acknowledges them (prefetch 500); timed from the first publish to the
//! last acknowledgement.
//!
//! `relay` is what a bridge with no journal and no mapping does: each
//! message consumed from FROM is published (persistent, mandatory) to the
//! queue TO, and acknowledged once the broker confirmed it.
//!
//! `publish` declares QUEUE (durable, classic) and gives each message its
//! own `message_id`. Both print one line: `<verb> COUNT messages in S s:
//! R msg/s` (for `consume`, timed from the first message to the last).

use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [verb @ ("publish" | "pubsub"), url, queue, count, body, rest @ ..] => {
            publish(url, queue, count, body, rest.first().copied(), *verb == "pubsub").await
        }
        ["consume", url, queue, count, rest @ ..] => {
            consume(url, queue, count, rest.first().copied()).await
        }
        ["relay", url, from, to, count, rest @ ..] => {
            relay(url, from, to, count, rest.first().copied()).await
        }
        ["count", url, queue, count] => count_up(url, queue, count).await,
        _ => Err("usage: amqp_rate publish URL QUEUE COUNT BODY_FILE [IN_FLIGHT] | consume URL QUEUE COUNT [PREFETCH] | pubsub URL QUEUE COUNT BODY_FILE [IN_FLIGHT] | relay URL FROM TO COUNT [IN_FLIGHT] | count URL QUEUE COUNT".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amqp_rate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(url: &str) -> Result<Connection, String> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())
}

/// A consumer of `queue` on a channel of its own, `prefetch` unacknowledged
/// at most.
async fn consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Result<lapin::Consumer, String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())
}

/// A channel in confirm mode, with the durable classic `queue` declared.
async fn confirming_channel(conn: &Connection, queue: &str) -> Result<lapin::Channel, String> {
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(channel)
}

fn number(s: &str, what: &str) -> Result<usize, String> {
    s.parse()
        .map_err(|_| format!("{what} \"{s}\" is not a number"))
}

/// A window of unacknowledged messages (a prefetch), `default` when not
/// given: at most 65535, as AMQP counts it.
fn window(s: Option<&str>, default: &str, what: &str) -> Result<u16, String> {
    u16::try_from(number(s.unwrap_or(default), what)?)
        .map_err(|_| format!("{what} is at most 65535"))
}

/// Publishes COUNT copies of BODY_FILE with confirms; with `consuming`,
/// a consumer on a connection of its own acknowledges them meanwhile
/// (`pubsub`), and the time runs until the last acknowledgement.
async fn publish(
    url: &str,
    queue: &str,
    count: &str,
    body: &str,
    in_flight: Option<&str>,
    consuming: bool,
) -> Result<(), String> {
    let count = number(count, "COUNT")?;
    let in_flight = number(in_flight.unwrap_or("256"), "IN_FLIGHT")?.max(1);
    let body = std::fs::read(body).map_err(|e| format!("cannot read {body}: {e}"))?;
    let conn = connect(url).await?;
    let channel = confirming_channel(&conn, queue).await?;
    let reader = if consuming {
        let reader = connect(url).await?;
        let consumer = consumer(&reader, queue, 500, "amqp_rate_pubsub").await?;
        Some((reader, consumer))
    } else {
        None
    };
    let started = Instant::now();
    let (published, consumed) = match reader {
        Some((reader, mut consumer)) => {
            let done = tokio::join!(
                publish_all(&channel, queue, count, &body, in_flight),
                consume_all(&mut consumer, count),
            );
            let _ = reader.close(200, "done".into()).await;
            done
        }
        None => (
            publish_all(&channel, queue, count, &body, in_flight).await,
            Ok(()),
        ),
    };
    published?;
    consumed?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let verb = if consuming {
        "published and consumed"
    } else {
        "published"
    };
    println!(
        "{verb} {count} messages in {secs:.2} s: {:.0} msg/s",
        count as f64 / secs
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Publishes `count` copies of `body` to `queue` (persistent, each with
/// its own `message_id`), `in_flight` awaiting their confirm at most, and
/// waits for the last confirm.
async fn publish_all(
    channel: &lapin::Channel,
    queue: &str,
    count: usize,
    body: &[u8],
    in_flight: usize,
) -> Result<(), String> {
    let mut pending = std::collections::VecDeque::with_capacity(in_flight);
    for i in 0..count {
        if pending.len() >= in_flight
            && let Some(confirm) = pending.pop_front()
        {
            let c: lapin::PublisherConfirm = confirm;
            if !c.await.map_err(|e| e.to_string())?.is_ack() {
                return Err("the broker refused a message (nack)".to_owned());
            }
        }
        let props = BasicProperties::default()
            .with_message_id(format!("bench-{i}").into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .map_err(|e| e.to_string())?;
        pending.push_back(confirm);
    }
    for c in pending {
        if !c.await.map_err(|e| e.to_string())?.is_ack() {
            return Err("the broker refused a message (nack)".to_owned());
        }
    }
    Ok(())
}

/// Consumes `count` messages, acknowledging each one by one.
async fn consume_all(consumer: &mut lapin::Consumer, count: usize) -> Result<(), String> {
    for _ in 0..count {
        let next = std::future::poll_fn(|cx| Pin::new(&mut *consumer).poll_next(cx)).await;
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("the consumer was cancelled".to_owned()),
        };
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn consume(
    url: &str,
    queue: &str,
    count: &str,
    prefetch: Option<&str>,
) -> Result<(), String> {
    let count = number(count, "COUNT")?;
    let prefetch = window(prefetch, "500", "PREFETCH")?;
    let conn = connect(url).await?;
    let mut consumer = consumer(&conn, queue, prefetch, "amqp_rate").await?;
    // Timed from the first message on: the first one waits for the
    // consumer to start.
    consume_all(&mut consumer, count.min(1)).await?;
    let first = Instant::now();
    consume_all(&mut consumer, count.saturating_sub(1)).await?;
    let secs = first.elapsed().as_secs_f64().max(1e-9);
    println!(
        "consumed {count} messages in {secs:.2} s: {:.0} msg/s",
        (count.saturating_sub(1)) as f64 / secs
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn count_up(url: &str, queue: &str, count: &str) -> Result<(), String> {
    let count = number(count, "COUNT")?;
    let conn = connect(url).await?;
    let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
    let mut first: Option<(Instant, usize)> = None;
    loop {
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let n = q.message_count() as usize;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= count {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let (at, seen) = first.unwrap_or((Instant::now(), count));
    let secs = at.elapsed().as_secs_f64().max(1e-9);
    println!(
        "counted {count} messages in {secs:.2} s: {:.0} msg/s",
        count.saturating_sub(seen) as f64 / secs
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn relay(
    url: &str,
    from: &str,
    to: &str,
    count: &str,
    in_flight: Option<&str>,
) -> Result<(), String> {
    let count = number(count, "COUNT")?;
    let in_flight = window(in_flight, "256", "IN_FLIGHT")?;
    let conn = connect(url).await?;
    let output = confirming_channel(&conn, to).await?;
    let mut consumer = consumer(&conn, from, in_flight, "amqp_rate_relay").await?;
    let mut tasks = tokio::task::JoinSet::new();
    let (mut received, mut done) = (0, 0);
    let mut first = None;
    while done < count {
        tokio::select! {
            Some(r) = tasks.join_next(), if !tasks.is_empty() => {
                r.map_err(|e| e.to_string())??;
                done += 1;
            }
            next = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)), if received < count => {
                let delivery = match next {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the consumer was cancelled".to_owned()),
                };
                first.get_or_insert_with(Instant::now);
                received += 1;
                let output = output.clone();
                let to = to.to_owned();
                tasks.spawn(async move {
                    let props = delivery.properties.clone().with_delivery_mode(2);
                    let confirm = output
                        .basic_publish(
                            "".into(),
                            to.as_str().into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &delivery.data,
                            props,
                        )
                        .await
                        .map_err(|e| e.to_string())?
                        .await
                        .map_err(|e| e.to_string())?;
                    if !confirm.is_ack() {
                        return Err("the broker refused a message (nack)".to_owned());
                    }
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| e.to_string())
                });
            }
        }
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64()).max(1e-9);
    println!(
        "relayed {count} messages in {secs:.2} s: {:.0} msg/s",
        count as f64 / secs
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}
