//! The subscription: one RESP3 connection per registry for all its keys, the filter that
//! drops the echoes of this instance's own publishes, and the health check that reports a
//! silent server.

use std::sync::Arc;

use futures_lite::StreamExt;
use reactive_lock::BackendEvent;

use super::connection::Commands;
use super::wire::PAYLOAD_MAGIC;
use super::{Inner, RedisBackend};

/// A subscription's connection and the messages its push callback passed on.
pub(super) struct Source {
    pub(super) connection: Commands,
    pub(super) pushes: async_channel::Receiver<redis::PushInfo>,
    /// What the push callback could not queue.
    pub(super) overflow: Arc<Overflow>,
}

/// What a subscription's push callback could not queue because the reader lagged
/// [`subscription_buffer`](super::RedisBackendBuilder::subscription_buffer) messages behind: the callback runs on the connection's task and must
/// never wait, so instead of the message it records its channel (at most one entry per
/// subscribed key) and the reader re-reads that key — the newest state wins, and no key's
/// final state is lost. A disconnection that finds the buffer full is kept as a flag.
pub(super) struct Overflow {
    channels: parking_lot::Mutex<std::collections::HashSet<String>>,
    disconnected: std::sync::atomic::AtomicBool,
    /// Whether `channels` may hold anything (read without the lock on every message).
    any: std::sync::atomic::AtomicBool,
    /// Messages replaced by a re-read: the backend's
    /// [`RedisStats::push_overflows`](super::RedisStats::push_overflows).
    pub(super) dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Overflow {
    pub(super) fn new(dropped: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Overflow {
            channels: parking_lot::Mutex::new(std::collections::HashSet::new()),
            disconnected: std::sync::atomic::AtomicBool::new(false),
            any: std::sync::atomic::AtomicBool::new(false),
            dropped,
        }
    }

    fn record(&self, info: &redis::PushInfo) {
        use std::sync::atomic::Ordering;
        match (info.kind.clone(), info.data.as_slice()) {
            (redis::PushKind::Disconnection, _) => {
                self.disconnected.store(true, Ordering::Release);
            }
            (redis::PushKind::Message, [redis::Value::BulkString(channel), ..]) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                let channel = String::from_utf8_lossy(channel).into_owned();
                self.channels.lock().insert(channel);
                self.any.store(true, Ordering::Release);
            }
            _ => {}
        }
    }

    /// A channel whose messages were dropped, to re-read; `None` if none.
    fn take_channel(&self) -> Option<String> {
        use std::sync::atomic::Ordering;
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut channels = self.channels.lock();
        let channel = channels.iter().next().cloned();
        if let Some(channel) = &channel {
            channels.remove(channel);
        }
        if channels.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        channel
    }
}

/// Channels per `SUBSCRIBE` command.
pub(super) const SUBSCRIBE_SLICE: usize = 256;

/// One delivered message: channel and payload.
pub(super) type Message = (String, Vec<u8>);

/// The push sender of a subscription: passes messages and disconnections on, except echoes of
/// `instance`'s own publishes (`RLv2\n<instance>\n...`), dropped here on the connection's
/// task so that the subscriber's thread is not woken for them. Instance names never contain a newline
/// (`publish` rejects them), so the prefix match is exact.
pub(super) fn own_echo_filter(
    instance: &str,
    tx: async_channel::Sender<redis::PushInfo>,
    overflow: Arc<Overflow>,
) -> impl Fn(redis::PushInfo) -> Result<(), redis::aio::SendError> + Send + Sync + 'static {
    let mut prefix = format!("{PAYLOAD_MAGIC}\n{instance}\n").into_bytes();
    prefix.shrink_to_fit();
    move |info: redis::PushInfo| {
        let pass = match info.kind {
            redis::PushKind::Message => !matches!(
                info.data.as_slice(),
                [_, redis::Value::BulkString(payload), ..] if payload.starts_with(&prefix)
            ),
            redis::PushKind::Disconnection => true,
            // Subscribe confirmations and the like (one per channel: 10,000 for 10,000
            // keys) would only be queued to be dropped by the reader.
            _ => false,
        };
        if !pass {
            return Ok(());
        }
        match tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(info)) => {
                overflow.record(&info);
                Ok(())
            }
            // The reader is gone: the connection may stop sending.
            Err(async_channel::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

impl Source {
    /// The next pub/sub message; `None` when the connection is gone.
    ///
    /// A channel whose messages overflowed comes back with an empty payload, which reads
    /// as not ours and so makes the reader re-read its key.
    pub(super) async fn next_message(&mut self) -> Option<Message> {
        loop {
            if let Some(channel) = self.overflow.take_channel() {
                return Some((channel, Vec::new()));
            }
            let push = match self.pushes.try_recv() {
                Ok(push) => push,
                Err(_)
                    if self
                        .overflow
                        .disconnected
                        .load(std::sync::atomic::Ordering::Acquire) =>
                {
                    return None;
                }
                Err(_) => self.pushes.recv().await.ok()?,
            };
            match push.kind {
                redis::PushKind::Message => {
                    if let [
                        redis::Value::BulkString(channel),
                        redis::Value::BulkString(payload),
                        ..,
                    ] = push.data.as_slice()
                    {
                        return Some((
                            String::from_utf8_lossy(channel).into_owned(),
                            payload.clone(),
                        ));
                    }
                }
                redis::PushKind::Disconnection => return None,
                _ => {}
            }
        }
    }

    pub(super) async fn ping(&mut self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection)
            .await
            .is_ok()
    }
}

/// A subscription's registration as its instance's publish connection; dropping it (the
/// subscription ended) takes the connection back out, unless a newer subscription of the
/// same instance has replaced it.
pub(super) struct OwnConnection {
    pub(super) inner: Arc<Inner>,
    pub(super) instance: String,
    pub(super) id: u64,
}

impl OwnConnection {
    pub(super) fn forget(inner: &Inner, instance: &str, id: u64) {
        let mut own = inner.own.lock();
        if own.get(instance).is_some_and(|(held, _)| *held == id) {
            own.remove(instance);
        }
    }
}

impl Drop for OwnConnection {
    fn drop(&mut self) {
        Self::forget(&self.inner, &self.instance, self.id);
    }
}

pub(super) struct Subscription {
    pub(super) backend: RedisBackend,
    /// This connection's role as the instance's publish connection; ends when the
    /// subscription does (dropped or disconnected).
    pub(super) own: Option<OwnConnection>,
    pub(super) source: Source,
    pub(super) done: bool,
    /// One periodic timer for the whole subscription (registering a fresh timer per
    /// message would cost a reactor wake-up per notification).
    pub(super) health_check: async_io::Timer,
    /// When the last message arrived: traffic proves the connection alive, so the server
    /// is pinged only after a full interval of silence.
    pub(super) last_message: std::time::Instant,
}

pub(super) enum Woke {
    Message(Option<Message>),
    HealthCheck,
}

impl Subscription {
    /// Marks the stream ended (after its `Disconnected`) and stops publishing through it.
    pub(super) fn end(&mut self) {
        self.done = true;
        self.own = None;
    }

    /// The next event; after `Disconnected` the stream ends and the driver resubscribes.
    pub(super) async fn next(mut self) -> Option<(BackendEvent, Self)> {
        if self.done {
            return None;
        }
        loop {
            let (source, health_check) = (&mut self.source, &mut self.health_check);
            let woke = futures_lite::future::or(
                async { Woke::Message(source.next_message().await) },
                async {
                    health_check.next().await;
                    Woke::HealthCheck
                },
            )
            .await;
            match woke {
                Woke::Message(Some((channel, payload))) => {
                    self.last_message = std::time::Instant::now();
                    if let Some(event) = self.backend.event_for(&channel, &payload).await {
                        if matches!(event, BackendEvent::Disconnected) {
                            self.end();
                        }
                        return Some((event, self));
                    }
                }
                Woke::Message(None) => {
                    tracing::warn!(address = %self.backend.inner.address, "reactive-lock: Redis subscription closed");
                    self.end();
                    return Some((BackendEvent::Disconnected, self));
                }
                Woke::HealthCheck
                    if self.last_message.elapsed() < self.backend.inner.health_check_interval => {}
                Woke::HealthCheck => {
                    let timeout = self.backend.inner.response_timeout;
                    let source = &mut self.source;
                    let alive = futures_lite::future::or(async { source.ping().await }, async {
                        async_io::Timer::after(timeout).await;
                        false
                    })
                    .await;
                    if !alive {
                        tracing::warn!(address = %self.backend.inner.address, "reactive-lock: Redis stopped answering");
                        self.end();
                        return Some((BackendEvent::Disconnected, self));
                    }
                }
            }
        }
    }
}
