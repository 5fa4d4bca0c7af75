//! The publisher confirms of one channel, and which publish each returned
//! message belongs to.
//!
//! lapin completes a publish's confirm with the returned message
//! (`basic.return`) that is first in its queue when that confirm
//! completes, whichever message it is; and on a `multiple` acknowledgement
//! it completes the confirms in no fixed order. A return therefore often
//! comes with another message's confirm. Every message nzela publishes
//! carries its delivery id as `message_id`, and a returned message carries
//! its properties: returns are attributed by that id, never by the confirm
//! they came with.
//!
//! A publish is *delivered* when the broker acknowledged it and no return
//! carrying its `message_id` came before that acknowledgement. The broker
//! sends a message's return before its acknowledgement on the channel, so
//! by the time the acknowledgement is processed the return is either in a
//! confirm completed so far or still in lapin's queue, from which the next
//! completions take it (first in, first out). Every return in that queue is
//! taken once every confirm pending at that moment has completed. So the
//! verdict of a publish is given once its own confirm has completed and
//! every publish that had started by then has had its confirm looked at.
//!
//! One task per channel (the collector) owns every confirm and decides,
//! so that no return is looked at after the verdict it changes. Each
//! publish first takes a [`Ticket`] (before `basic.publish`, so that a
//! confirm can only complete at a moment when every publish it could be
//! acknowledged with holds a ticket), then hands its confirm over with
//! [`Ticket::track`] and awaits its [`Verdict`]. A ticket dropped without
//! being tracked (the publish failed, or was abandoned halfway) leaves
//! confirms the collector cannot see: the channel is then reset, and every
//! publish not decided yet fails (to be retried on the next channel).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use lapin::{Confirmation, PublisherConfirm};
use nzela_core::runtime::CancellationToken;
use tokio::sync::{mpsc, oneshot};

/// What the broker made of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Acknowledged, and no return carrying its `message_id` came first.
    Delivered,
    /// Returned: no queue is bound for its routing key.
    Returned { reply_code: u16, reply_text: String },
    /// Refused (`basic.nack`).
    Refused,
    /// The channel failed or was reset before the verdict: what became of
    /// the message is not known.
    Failed(String),
}

/// The confirms of one channel in confirm mode. Dropping it (and every
/// ticket) ends its collector.
pub(crate) struct Confirms {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
}

struct Shared {
    /// Tickets handed out so far.
    tickets: AtomicU64,
    /// Cancelled when the channel must be reset.
    reset: CancellationToken,
    why: Mutex<Option<String>>,
}

impl Shared {
    fn reset(&self, why: String) {
        if let Ok(mut w) = self.why.lock()
            && w.is_none()
        {
            *w = Some(why);
        }
        self.reset.cancel();
    }
}

enum Event {
    Track {
        ticket: u64,
        message_id: String,
        confirm: PublisherConfirm,
        verdict: oneshot::Sender<Verdict>,
    },
    /// The publish of this ticket was not tracked.
    Void { ticket: u64 },
}

/// A publish's place among the channel's publishes, taken before
/// `basic.publish`.
pub(crate) struct Ticket {
    n: u64,
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl Ticket {
    /// Hands the publish's confirm to the collector; the receiver gets its
    /// verdict (it is dropped unanswered only when the collector stopped).
    pub fn track(
        mut self,
        message_id: String,
        confirm: PublisherConfirm,
    ) -> oneshot::Receiver<Verdict> {
        let (verdict, receiver) = oneshot::channel();
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::Track {
                ticket: self.n,
                message_id,
                confirm,
                verdict,
            });
        }
        receiver
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::Void { ticket: self.n });
        }
    }
}

impl Confirms {
    /// Starts the collector of one channel; it stops when `stop` is
    /// cancelled or when this and every ticket are dropped.
    pub fn start(stop: CancellationToken) -> Confirms {
        let shared = Arc::new(Shared {
            tickets: AtomicU64::new(0),
            reset: CancellationToken::new(),
            why: Mutex::new(None),
        });
        let (events, receiver) = mpsc::unbounded_channel();
        tokio::spawn(collect(receiver, shared.clone(), stop));
        Confirms { shared, events }
    }

    pub fn ticket(&self) -> Ticket {
        Ticket {
            n: self.shared.tickets.fetch_add(1, Ordering::AcqRel),
            events: Some(self.events.clone()),
        }
    }

    /// Asks for the channel to be closed and opened again (a confirm that
    /// never came, a publish abandoned halfway): the first reason given is
    /// kept.
    pub fn reset(&self, why: String) {
        self.shared.reset(why);
    }

    /// Resolves once a reset was asked for, with its reason.
    pub async fn reset_requested(&self) -> String {
        self.shared.reset.cancelled().await;
        self.shared
            .why
            .lock()
            .ok()
            .and_then(|w| w.clone())
            .unwrap_or_else(|| "the channel was reset".to_owned())
    }
}

/// One publish whose verdict is not given yet.
struct Entry {
    message_id: String,
    verdict: oneshot::Sender<Verdict>,
    confirmed: Option<Confirmed>,
    returned: Option<(u16, String)>,
}

enum Confirmed {
    Ack,
    Nack,
    Failed(String),
}

/// A return whose publish is not tracked yet, with the number of tickets
/// handed out when it came: once all of those are accounted for, no
/// publish of this channel can claim it.
struct Orphan {
    message_id: String,
    reply: (u16, String),
    tickets: u64,
}

/// The collector's state; its methods do not wait.
#[derive(Default)]
struct Book {
    entries: HashMap<u64, Entry>,
    by_message_id: HashMap<String, BTreeSet<u64>>,
    /// Every ticket below is accounted for (its confirm looked at, or void).
    floor: u64,
    /// Tickets at or above `floor` accounted for.
    above: BTreeSet<u64>,
    /// Publishes confirmed, by the number of tickets that must be accounted
    /// for before their verdict (then ticket).
    waiting: BTreeSet<(u64, u64)>,
    orphans: Vec<Orphan>,
    /// Why the channel is being reset: every verdict is then a failure.
    poisoned: Option<String>,
}

impl Book {
    fn accounted(&mut self, ticket: u64) {
        if ticket == self.floor {
            self.floor += 1;
            while self.above.remove(&self.floor) {
                self.floor += 1;
            }
        } else if ticket > self.floor {
            self.above.insert(ticket);
        }
    }

    /// A new publish; `false` when the channel is being reset (its verdict
    /// is then given at once).
    fn track(
        &mut self,
        ticket: u64,
        message_id: String,
        verdict: oneshot::Sender<Verdict>,
    ) -> bool {
        if let Some(why) = &self.poisoned {
            let _ = verdict.send(Verdict::Failed(why.clone()));
            self.accounted(ticket);
            return false;
        }
        let returned = self
            .orphans
            .iter()
            .position(|o| o.message_id == message_id)
            .map(|i| self.orphans.swap_remove(i).reply);
        self.by_message_id
            .entry(message_id.clone())
            .or_default()
            .insert(ticket);
        self.entries.insert(
            ticket,
            Entry {
                message_id,
                verdict,
                confirmed: None,
                returned,
            },
        );
        true
    }

    /// A returned message (its `message_id`, reply code and text), given
    /// to the publish it belongs to.
    fn returned(&mut self, message_id: Option<String>, reply: (u16, String), tickets: u64) {
        let Some(id) = message_id else {
            tracing::warn!(reply_code = reply.0, reply_text = %reply.1, "the broker returned a message without a message_id; it is not one of nzela's");
            return;
        };
        let claimed = self.by_message_id.get(&id).and_then(|tickets| {
            tickets
                .iter()
                .copied()
                .find(|t| self.entries.get(t).is_some_and(|e| e.returned.is_none()))
        });
        match claimed.and_then(|t| self.entries.get_mut(&t)) {
            Some(entry) => entry.returned = Some(reply),
            None => self.orphans.push(Orphan {
                message_id: id,
                reply,
                tickets,
            }),
        }
    }

    /// The confirm of `ticket` completed; `tickets` were handed out then.
    fn confirmed(&mut self, ticket: u64, confirmed: Confirmed, tickets: u64) {
        if let Some(entry) = self.entries.get_mut(&ticket) {
            entry.confirmed = Some(confirmed);
            self.waiting.insert((tickets, ticket));
        }
        self.accounted(ticket);
    }

    /// Gives every verdict that is due.
    fn decide(&mut self) {
        while let Some(&(needed, ticket)) = self.waiting.first() {
            if needed > self.floor {
                break;
            }
            self.waiting.pop_first();
            let Some(entry) = self.entries.remove(&ticket) else {
                continue;
            };
            if let Some(tickets) = self.by_message_id.get_mut(&entry.message_id) {
                tickets.remove(&ticket);
                if tickets.is_empty() {
                    self.by_message_id.remove(&entry.message_id);
                }
            }
            let verdict = match (entry.confirmed, entry.returned) {
                (Some(Confirmed::Failed(why)), _) => Verdict::Failed(why),
                // Only confirmed publishes wait for their verdict.
                (None, _) => Verdict::Failed("no confirm was received".to_owned()),
                (Some(_), Some((reply_code, reply_text))) => Verdict::Returned {
                    reply_code,
                    reply_text,
                },
                (Some(Confirmed::Nack), None) => Verdict::Refused,
                (Some(Confirmed::Ack), None) => Verdict::Delivered,
            };
            let _ = entry.verdict.send(verdict);
        }
        let floor = self.floor;
        self.orphans.retain(|o| {
            let keep = o.tickets > floor;
            if !keep {
                tracing::warn!(message_id = %o.message_id, reply_code = o.reply.0, reply_text = %o.reply.1, "the broker returned a message no publish in flight claims");
            }
            keep
        });
    }

    /// Every publish not decided fails with `why`, and so does every later
    /// one on this channel.
    fn poison(&mut self, why: &str) {
        for (_, entry) in self.entries.drain() {
            let _ = entry.verdict.send(Verdict::Failed(why.to_owned()));
        }
        self.by_message_id.clear();
        self.waiting.clear();
        self.orphans.clear();
        self.poisoned.get_or_insert_with(|| why.to_owned());
    }
}

/// The collector of one channel: tracks the publishes, looks at each
/// confirm as it completes, gives the verdicts.
async fn collect(
    mut events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut book = Book::default();
    // Polled by the collector itself: no task per publish.
    let mut confirms = FuturesUnordered::new();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Track { ticket, message_id, confirm, verdict }) => {
                    if book.track(ticket, message_id, verdict) {
                        confirms.push(async move { (ticket, confirm.await) });
                    }
                }
                Some(Event::Void { ticket }) => {
                    book.accounted(ticket);
                    if book.poisoned.is_none() {
                        let why = "a publish was not completed; the channel is reset".to_owned();
                        book.poison(&why);
                        shared.reset(why);
                    }
                }
                None => break,
            },
            Some((ticket, done)) = confirms.next(), if !confirms.is_empty() => {
                let tickets = shared.tickets.load(Ordering::Acquire);
                let confirmed = match done {
                    Ok(c) => {
                        let (confirmed, returned) = match c {
                            Confirmation::Ack(r) => (Confirmed::Ack, r),
                            Confirmation::Nack(r) => (Confirmed::Nack, r),
                            Confirmation::NotRequested => (
                                Confirmed::Failed("the channel is not in confirm mode".to_owned()),
                                None,
                            ),
                        };
                        if let Some(r) = returned {
                            let id = r.properties.message_id().as_ref().map(|i| i.to_string());
                            book.returned(id, (r.reply_code, r.reply_text.to_string()), tickets);
                        }
                        confirmed
                    }
                    Err(e) => {
                        Confirmed::Failed(format!(
                            "the broker did not confirm the message: {}",
                            super::reason(&e)
                        ))
                    }
                };
                book.confirmed(ticket, confirmed, tickets);
                book.decide();
            }
            () = stop.cancelled() => break,
        }
    }
    book.poison("the channel was closed before the broker confirmed the message");
}

#[cfg(test)]
mod tests {
    use super::{Book, Confirmed, Verdict};
    use tokio::sync::oneshot;

    fn track(book: &mut Book, ticket: u64, id: &str) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        assert!(book.track(ticket, id.to_owned(), tx));
        rx
    }

    fn returned(book: &mut Book, id: &str, tickets: u64) {
        book.returned(Some(id.to_owned()), (312, "NO_ROUTE".to_owned()), tickets);
    }

    #[test]
    fn a_return_that_came_with_another_confirm_goes_to_its_own_publish() {
        let mut book = Book::default();
        let mut a = track(&mut book, 0, "a");
        let mut b = track(&mut book, 1, "b");
        // One multiple ack for both, completed b first: b's confirm
        // carries a's return.
        returned(&mut book, "a", 2);
        book.confirmed(1, Confirmed::Ack, 2);
        book.decide();
        // b waits for a's confirm to be looked at.
        assert!(b.try_recv().is_err());
        book.confirmed(0, Confirmed::Ack, 2);
        book.decide();
        assert!(matches!(
            a.try_recv(),
            Ok(Verdict::Returned {
                reply_code: 312,
                ..
            })
        ));
        assert_eq!(b.try_recv(), Ok(Verdict::Delivered));
    }

    #[test]
    fn a_verdict_waits_for_every_publish_started_before_its_confirm() {
        let mut book = Book::default();
        let mut a = track(&mut book, 0, "a");
        // a is acknowledged while b (ticket 1) is being published.
        book.confirmed(0, Confirmed::Ack, 2);
        book.decide();
        assert!(a.try_recv().is_err());
        // b's confirm carries a's return: a was not delivered.
        let mut b = track(&mut book, 1, "b");
        returned(&mut book, "a", 2);
        book.confirmed(1, Confirmed::Ack, 2);
        book.decide();
        assert!(matches!(a.try_recv(), Ok(Verdict::Returned { .. })));
        assert_eq!(b.try_recv(), Ok(Verdict::Delivered));
    }

    #[test]
    fn a_return_before_its_publish_is_tracked_is_kept_for_it() {
        let mut book = Book::default();
        let mut a = track(&mut book, 0, "a");
        returned(&mut book, "b", 2);
        book.confirmed(0, Confirmed::Ack, 2);
        book.decide();
        let mut b = track(&mut book, 1, "b");
        book.confirmed(1, Confirmed::Ack, 2);
        book.decide();
        assert_eq!(a.try_recv(), Ok(Verdict::Delivered));
        assert!(matches!(b.try_recv(), Ok(Verdict::Returned { .. })));
        assert!(book.orphans.is_empty());
    }

    #[test]
    fn a_void_ticket_fails_every_publish_not_decided() {
        let mut book = Book::default();
        let mut a = track(&mut book, 0, "a");
        book.confirmed(0, Confirmed::Ack, 2);
        book.decide();
        book.accounted(1);
        book.poison("reset");
        assert_eq!(a.try_recv(), Ok(Verdict::Failed("reset".to_owned())));
        let (tx, mut rx) = oneshot::channel();
        assert!(!book.track(2, "c".to_owned(), tx));
        assert_eq!(rx.try_recv(), Ok(Verdict::Failed("reset".to_owned())));
    }
}
