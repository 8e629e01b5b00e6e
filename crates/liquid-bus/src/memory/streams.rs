//! Durable streams and pull consumers for the in-process bus, with JetStream's semantics
//! (see [`crate::durable`]): sequence numbers, a de-duplication window, age and count limits,
//! consumers with a position, outstanding deliveries, ack wait, redelivery and `max_deliver`.
//!
//! All state sits behind one mutex held only for short, non-awaiting sections. Waiting
//! fetchers park on the stream's [`Notify`], woken by every store and acknowledgement; time
//! based redelivery is computed when a fetch runs, never by a background task.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::durable::{AckKind, ConsumerConfig, ConsumerInfo, DeliverFrom, PublishAck};
use crate::{BusError, MSG_ID_HEADER, Message, StreamConfig, subject};

struct Stored {
    message: Message,
    stored_at: Instant,
}

/// An outstanding delivery. When it falls due is computed with the consumer's current
/// `ack_wait` (as JetStream does when the setting changes), unless a nak set a delay.
struct Pending {
    deliveries: u64,
    since: Instant,
    nak_delay: Option<Duration>,
}

impl Pending {
    fn due(&self, ack_wait: Duration) -> Instant {
        self.since + self.nak_delay.unwrap_or(ack_wait)
    }

    fn restart(&mut self, now: Instant, nak_delay: Option<Duration>) {
        self.since = now;
        self.nak_delay = nak_delay;
    }
}

struct ConsumerState {
    config: ConsumerConfig,
    /// Next stream sequence to consider for a first delivery.
    next_seq: u64,
    /// Delivered, unacknowledged messages by stream sequence.
    pending: BTreeMap<u64, Pending>,
}

impl ConsumerState {
    fn wants(&self, subject: &str) -> bool {
        self.config
            .filter_subject
            .as_deref()
            .is_none_or(|f| subject::matches(f, subject))
    }
}

struct StreamState {
    config: StreamConfig,
    messages: BTreeMap<u64, Stored>,
    last_seq: u64,
    dedupe: HashMap<String, (u64, Instant)>,
    dedupe_order: VecDeque<(Instant, String)>,
    consumers: BTreeMap<String, ConsumerState>,
    changed: Arc<Notify>,
}

impl StreamState {
    fn new(config: StreamConfig) -> StreamState {
        StreamState {
            config,
            messages: BTreeMap::new(),
            last_seq: 0,
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            consumers: BTreeMap::new(),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Removes messages beyond the age and count limits and forgets expired de-duplication ids.
    fn apply_limits(&mut self, now: Instant) {
        if let Some(max_age) = self.config.max_age {
            while let Some(entry) = self.messages.first_entry() {
                if now.saturating_duration_since(entry.get().stored_at) < max_age {
                    break;
                }
                entry.remove();
            }
        }
        if let Some(max) = self.config.max_messages {
            while self.messages.len() as u64 > max {
                self.messages.pop_first();
            }
        }
        let window = self.config.duplicate_window;
        while let Some((seen, _)) = self.dedupe_order.front() {
            if now.saturating_duration_since(*seen) < window {
                break;
            }
            if let Some((seen, id)) = self.dedupe_order.pop_front()
                && self.dedupe.get(&id).is_some_and(|(_, t)| *t == seen)
            {
                self.dedupe.remove(&id);
            }
        }
    }

    fn store(&mut self, message: &Message, now: Instant) -> PublishAck {
        self.apply_limits(now);
        let msg_id = message.headers.get(MSG_ID_HEADER);
        if let Some((seq, _)) = msg_id.and_then(|id| self.dedupe.get(id)) {
            return PublishAck {
                stream: self.config.name.clone(),
                sequence: *seq,
                duplicate: true,
            };
        }
        self.last_seq += 1;
        let seq = self.last_seq;
        self.messages.insert(
            seq,
            Stored {
                message: message.clone(),
                stored_at: now,
            },
        );
        if let Some(id) = msg_id {
            self.dedupe.insert(id.to_owned(), (seq, now));
            self.dedupe_order.push_back((now, id.to_owned()));
        }
        self.apply_limits(now);
        PublishAck {
            stream: self.config.name.clone(),
            sequence: seq,
            duplicate: false,
        }
    }

    fn consumer_mut(&mut self, name: &str) -> Result<&mut ConsumerState, BusError> {
        self.consumers
            .get_mut(name)
            .ok_or_else(|| no_consumer(&self.config.name, name))
    }

    /// Drops outstanding deliveries that are due but may not be delivered again: their message
    /// is gone, or they reached `max_deliver`.
    fn sweep(&mut self, name: &str, now: Instant) -> Result<(), BusError> {
        let stream = &self.config.name;
        let messages = &self.messages;
        let consumer = self
            .consumers
            .get_mut(name)
            .ok_or_else(|| no_consumer(stream, name))?;
        let max_deliver = consumer.config.max_deliver.map(u64::from);
        let ack_wait = consumer.config.ack_wait;
        consumer.pending.retain(|seq, p| {
            if p.due(ack_wait) > now {
                return true;
            }
            if !messages.contains_key(seq) {
                return false;
            }
            if max_deliver.is_some_and(|max| p.deliveries >= max) {
                tracing::warn!(
                    target: "bus",
                    %stream,
                    consumer = %name,
                    sequence = *seq,
                    deliveries = p.deliveries,
                    "message reached max_deliver and will not be delivered again"
                );
                return false;
            }
            true
        });
        Ok(())
    }

    fn take(&mut self, name: &str, max: usize, now: Instant) -> Result<Taken, BusError> {
        self.apply_limits(now);
        self.sweep(name, now)?;
        let last_seq = self.last_seq;
        let messages = &self.messages;
        let consumer = self
            .consumers
            .get_mut(name)
            .ok_or_else(|| no_consumer(&self.config.name, name))?;
        let ack_wait = consumer.config.ack_wait;
        let mut deliveries = Vec::new();

        // Redeliveries first, oldest sequence first.
        for (seq, p) in consumer.pending.iter_mut() {
            if deliveries.len() >= max {
                break;
            }
            if p.due(ack_wait) > now {
                continue;
            }
            let Some(stored) = messages.get(seq) else {
                continue;
            };
            p.deliveries += 1;
            p.restart(now, None);
            deliveries.push((*seq, p.deliveries, stored.message.clone()));
        }

        // Then new messages, within the outstanding limit.
        let max_pending = consumer.config.max_ack_pending as usize;
        while deliveries.len() < max && consumer.pending.len() < max_pending {
            let next = messages
                .range(consumer.next_seq..)
                .find(|(_, stored)| consumer.wants(&stored.message.subject));
            let Some((seq, stored)) = next else {
                consumer.next_seq = last_seq + 1;
                break;
            };
            consumer.next_seq = seq + 1;
            consumer.pending.insert(
                *seq,
                Pending {
                    deliveries: 1,
                    since: now,
                    nak_delay: None,
                },
            );
            deliveries.push((*seq, 1, stored.message.clone()));
        }

        let next_due = consumer.pending.values().map(|p| p.due(ack_wait)).min();
        Ok(Taken {
            deliveries,
            next_due,
        })
    }
}

/// A consumer handle outlived its consumer; consumers are never deleted, so this is a bug.
fn no_consumer(stream: &str, name: &str) -> BusError {
    BusError::Rejected {
        operation: "consumer lookup",
        reason: format!("consumer `{name}` does not exist on stream `{stream}`"),
    }
}

/// What one fetch took: `(stream sequence, delivery count, message)` and when the earliest
/// outstanding delivery falls due.
pub(super) struct Taken {
    pub(super) deliveries: Vec<(u64, u64, Message)>,
    pub(super) next_due: Option<Instant>,
}

/// Every stream of one in-process bus.
#[derive(Default)]
pub(super) struct Streams {
    state: Mutex<BTreeMap<String, StreamState>>,
}

impl Streams {
    // Every critical section leaves the maps consistent before it can panic, so a poisoned
    // lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, StreamState>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stream_mut<'a>(
        streams: &'a mut BTreeMap<String, StreamState>,
        name: &str,
    ) -> Result<&'a mut StreamState, BusError> {
        streams
            .get_mut(name)
            .ok_or_else(|| BusError::StreamNotFound {
                stream: name.to_owned(),
            })
    }

    /// Creates the stream or updates its subjects and limits.
    pub(super) fn ensure(&self, config: &StreamConfig, now: Instant) -> Result<(), BusError> {
        let mut streams = self.lock();
        for (name, other) in streams.iter() {
            if *name == config.name {
                continue;
            }
            for ours in &config.subjects {
                if let Some(theirs) = other
                    .config
                    .subjects
                    .iter()
                    .find(|theirs| subject::overlaps(ours, theirs))
                {
                    return Err(BusError::StreamConflict {
                        stream: config.name.clone(),
                        reason: format!("subject `{ours}` overlaps `{theirs}` of stream `{name}`"),
                    });
                }
            }
        }
        let stream = streams
            .entry(config.name.clone())
            .or_insert_with(|| StreamState::new(config.clone()));
        stream.config = config.clone();
        stream.apply_limits(now);
        Ok(())
    }

    /// Stores `message` in the stream capturing its subject; `None` when no stream does.
    pub(super) fn store(&self, message: &Message, now: Instant) -> Option<PublishAck> {
        let mut streams = self.lock();
        let stream = streams.values_mut().find(|s| {
            s.config
                .subjects
                .iter()
                .any(|p| subject::matches(p, &message.subject))
        })?;
        let ack = stream.store(message, now);
        if !ack.duplicate {
            stream.changed.notify_waiters();
        }
        Some(ack)
    }

    /// Creates the consumer or updates its settings (keeping its position); returns the
    /// stream's change notifier.
    pub(super) fn ensure_consumer(
        &self,
        config: &ConsumerConfig,
        now: Instant,
    ) -> Result<Arc<Notify>, BusError> {
        let mut streams = self.lock();
        let stream = Self::stream_mut(&mut streams, &config.stream)?;
        let conflict = |reason: &str| BusError::ConsumerConflict {
            stream: config.stream.clone(),
            consumer: config.name.clone(),
            reason: reason.to_owned(),
        };
        let first_new = stream.last_seq + 1;
        match stream.consumers.get_mut(&config.name) {
            Some(existing) => {
                if existing.config.deliver_from != config.deliver_from {
                    return Err(conflict("the start position of a consumer cannot change"));
                }
                existing.config = config.clone();
            }
            None => {
                let next_seq = match config.deliver_from {
                    DeliverFrom::All => 1,
                    DeliverFrom::New => first_new,
                };
                stream.consumers.insert(
                    config.name.clone(),
                    ConsumerState {
                        config: config.clone(),
                        next_seq,
                        pending: BTreeMap::new(),
                    },
                );
            }
        }
        stream.apply_limits(now);
        // New settings (a larger max_ack_pending, another filter) may let waiting fetches go on.
        stream.changed.notify_waiters();
        Ok(stream.changed.clone())
    }

    /// Takes up to `max` deliveries for the consumer.
    pub(super) fn take(
        &self,
        stream: &str,
        consumer: &str,
        max: usize,
        now: Instant,
    ) -> Result<Taken, BusError> {
        let mut streams = self.lock();
        Self::stream_mut(&mut streams, stream)?.take(consumer, max, now)
    }

    /// Applies an acknowledgement to one outstanding delivery; unknown ones are ignored (already
    /// acknowledged, terminated or given up), as JetStream does.
    pub(super) fn answer(
        &self,
        stream: &str,
        consumer: &str,
        seq: u64,
        kind: AckKind,
        now: Instant,
    ) -> Result<(), BusError> {
        let mut streams = self.lock();
        let state = Self::stream_mut(&mut streams, stream)?;
        let entry = state.consumer_mut(consumer)?;
        match kind {
            AckKind::Ack | AckKind::Term => {
                entry.pending.remove(&seq);
            }
            AckKind::Nak(delay) => {
                if let Some(p) = entry.pending.get_mut(&seq) {
                    p.restart(now, Some(delay.unwrap_or_default()));
                }
            }
            AckKind::Progress => {
                if let Some(p) = entry.pending.get_mut(&seq) {
                    p.restart(now, None);
                }
            }
        }
        state.changed.notify_waiters();
        Ok(())
    }

    /// The consumer's backlog.
    pub(super) fn info(
        &self,
        stream: &str,
        consumer: &str,
        now: Instant,
    ) -> Result<ConsumerInfo, BusError> {
        let mut streams = self.lock();
        let state = Self::stream_mut(&mut streams, stream)?;
        state.apply_limits(now);
        state.sweep(consumer, now)?;
        let entry = state
            .consumers
            .get(consumer)
            .ok_or_else(|| no_consumer(stream, consumer))?;
        let pending = state
            .messages
            .range(entry.next_seq..)
            .filter(|(_, stored)| entry.wants(&stored.message.subject))
            .count() as u64;
        Ok(ConsumerInfo {
            pending,
            ack_pending: entry.pending.len() as u64,
        })
    }

    /// Wakes every waiting fetch (on shutdown).
    pub(super) fn wake_all(&self) {
        for stream in self.lock().values() {
            stream.changed.notify_waiters();
        }
    }
}
