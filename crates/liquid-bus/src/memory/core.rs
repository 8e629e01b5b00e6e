//! Core fan-out for the in-process bus: a registry of subscriptions, each a bounded channel.
//!
//! Publishing hands a copy to every plain subscription whose pattern matches and to one member
//! of each matching queue group (round robin). A full channel drops the message for that
//! subscriber, as NATS does for a slow consumer. Dropping a subscription's stream removes it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::mpsc;

use crate::{BusError, Message, subject};

/// A message as routed, with the reply subject of a request.
#[derive(Debug)]
pub(super) struct Routed {
    pub(super) message: Message,
    pub(super) reply: Option<String>,
}

struct Entry {
    pattern: String,
    queue: Option<String>,
    sender: mpsc::Sender<Routed>,
}

/// The subscription registry.
pub(super) struct Core {
    entries: RwLock<BTreeMap<u64, Entry>>,
    next_id: AtomicU64,
    round_robin: AtomicUsize,
    capacity: usize,
    closed: AtomicBool,
}

impl Core {
    pub(super) fn new(capacity: usize) -> Core {
        Core {
            entries: RwLock::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
            capacity,
            closed: AtomicBool::new(false),
        }
    }

    // A panic while holding the lock cannot leave the map half-updated (every write is one
    // insert or remove), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Entry>> {
        self.entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Entry>> {
        self.entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Registers a subscription on `pattern` (in queue group `queue`, if any).
    pub(super) fn subscribe(
        self: &Arc<Self>,
        pattern: &str,
        queue: Option<&str>,
    ) -> Result<RoutedStream, BusError> {
        let (sender, receiver) = mpsc::channel(self.capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut entries = self.write();
            // Checked under the lock so that `close` cannot miss a subscription made meanwhile.
            if self.is_closed() {
                return Err(BusError::Closed);
            }
            entries.insert(
                id,
                Entry {
                    pattern: pattern.to_owned(),
                    queue: queue.map(str::to_owned),
                    sender,
                },
            );
        }
        Ok(RoutedStream {
            receiver,
            _registration: Registration {
                core: Arc::downgrade(self),
                id,
            },
        })
    }

    /// Routes a message; returns how many subscriptions and queue groups showed interest
    /// (0 means "no responders" for a request).
    pub(super) fn route(&self, message: &Message, reply: Option<&str>) -> usize {
        let entries = self.read();
        let mut interest = 0;
        let mut groups: Vec<(&str, Vec<&Entry>)> = Vec::new();
        for entry in entries.values() {
            if !subject::matches(&entry.pattern, &message.subject) {
                continue;
            }
            match entry.queue.as_deref() {
                None => {
                    interest += 1;
                    deliver(entry, message, reply);
                }
                Some(queue) => match groups.iter_mut().find(|(name, _)| *name == queue) {
                    Some((_, members)) => members.push(entry),
                    None => groups.push((queue, vec![entry])),
                },
            }
        }
        for (_, members) in groups {
            interest += 1;
            let pick = self.round_robin.fetch_add(1, Ordering::Relaxed) % members.len();
            deliver(members[pick], message, reply);
        }
        interest
    }

    /// Closes every subscription: each stream ends after what it has buffered.
    pub(super) fn close(&self) {
        let mut entries = self.write();
        self.closed.store(true, Ordering::Release);
        entries.clear();
    }

    fn remove(&self, id: u64) {
        self.write().remove(&id);
    }
}

fn deliver(entry: &Entry, message: &Message, reply: Option<&str>) {
    let routed = Routed {
        message: message.clone(),
        reply: reply.map(str::to_owned),
    };
    match entry.sender.try_send(routed) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            tracing::warn!(
                target: "bus",
                subject = %message.subject,
                pattern = %entry.pattern,
                "slow subscriber, message dropped"
            );
        }
        // The subscription is being dropped; its registration removes it.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

/// Removes a subscription from the registry when its stream is dropped.
struct Registration {
    core: Weak<Core>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(core) = self.core.upgrade() {
            core.remove(self.id);
        }
    }
}

/// The receiving side of one subscription.
pub(super) struct RoutedStream {
    receiver: mpsc::Receiver<Routed>,
    _registration: Registration,
}

impl Stream for RoutedStream {
    type Item = Routed;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Routed>> {
        self.receiver.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;

    fn message(subject: &str) -> Message {
        Message {
            subject: subject.to_owned(),
            headers: crate::Headers::new(),
            payload: Bytes::from_static(b"x"),
        }
    }

    #[tokio::test]
    async fn queue_groups_get_one_copy_and_plain_subscribers_all() {
        let core = Arc::new(Core::new(16));
        let mut plain = core.subscribe("a.*", None).unwrap();
        let mut q1 = core.subscribe("a.b", Some("g")).unwrap();
        let mut q2 = core.subscribe("a.>", Some("g")).unwrap();
        for _ in 0..4 {
            assert_eq!(core.route(&message("a.b"), None), 2);
        }
        for _ in 0..4 {
            assert!(plain.next().await.is_some());
        }
        let mut group_total = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), q1.next()).await
        {
            group_total += 1;
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), q2.next()).await
        {
            group_total += 1;
        }
        assert_eq!(group_total, 4);
    }

    #[tokio::test]
    async fn a_full_subscriber_loses_messages_and_a_dropped_one_is_removed() {
        let core = Arc::new(Core::new(2));
        let mut sub = core.subscribe("a", None).unwrap();
        for _ in 0..5 {
            core.route(&message("a"), None);
        }
        let mut got = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), sub.next()).await
        {
            got += 1;
        }
        assert_eq!(got, 2);
        drop(sub);
        assert_eq!(core.route(&message("a"), None), 0);
    }

    #[tokio::test]
    async fn closing_ends_streams_and_refuses_new_subscriptions() {
        let core = Arc::new(Core::new(4));
        let mut sub = core.subscribe("a", None).unwrap();
        core.route(&message("a"), None);
        core.close();
        assert!(sub.next().await.is_some());
        assert!(sub.next().await.is_none());
        assert!(matches!(core.subscribe("a", None), Err(BusError::Closed)));
    }
}
