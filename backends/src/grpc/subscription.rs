//! The subscription: one stream per hub and key, all feeding one merge task that keeps, per
//! key, every hub's latest state and whether it is up, and turns them into the events the
//! registry's driver reads (a snapshot merged across hubs, `KeyDisconnected`,
//! `Disconnected`, `Reconnected`).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures_lite::{Stream, StreamExt};
use reactive_lock::{BackendEvent, Entry, Snapshot, StoreTime};
use tonic::transport::Endpoint;

use super::auth::AddToken;
use super::proto::reactive_lock_grpc_client::ReactiveLockGrpcClient;
use super::proto::{self, LockStatusNotification, LockStatusRequest};
use super::{Client, SKIP_OWN_HEADER, store_time};

/// What to subscribe to, and how.
pub(super) struct Plan {
    /// Each hub's URL (for logs) and endpoint.
    pub(super) hubs: Vec<(String, Endpoint)>,
    pub(super) keys: Vec<String>,
    /// The subscribing instance: its own entry's changes are not passed on.
    pub(super) instance: String,
    /// Streams per HTTP/2 connection (below a server's `max_concurrent_streams`).
    pub(super) per_connection: usize,
    pub(super) token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Opening a stream is bounded up to its first message.
    pub(super) open_timeout: Duration,
}

/// Events buffered between the merge task and the registry's driver. When the driver lags,
/// the merge waits on this channel while the streams' news coalesces in [`Latest`], so
/// neither grows with a burst.
const EVENTS_BUFFER: usize = 64;

/// The news the key streams hand to the merge task, coalesced: per hub and key, only the
/// newest state (and whether the stream went down since the merge last looked), so a burst
/// of notifications costs one slot per hub and key, however long the merge lags. A stream
/// task only overwrites its slot and wakes the merge: it never waits on the merge, so it
/// always keeps reading its stream (and the hub never sees it stall).
///
/// No news is lost: the merge takes every slot that changed since it last looked, and the
/// newest state of each is the one that counts; a stream that went down and came back in
/// between is reported as both, so the driver still resyncs.
#[derive(Default)]
struct Latest {
    slots: parking_lot::Mutex<HashMap<(usize, String), Slot>>,
    changed: tokio::sync::Notify,
}

/// One hub's news about one key since the merge last looked.
struct Slot {
    /// The newest state; `None` while its stream is down.
    state: Option<LockStatusNotification>,
    /// The stream went down at some point since.
    went_down: bool,
}

/// One hub's news about one key: its state, or `None` when its stream went down.
type Update = (usize, String, Option<LockStatusNotification>);

impl Latest {
    fn put(&self, hub: usize, key: &str, state: Option<LockStatusNotification>) {
        let went_down = state.is_none();
        let mut slots = self.slots.lock();
        match slots.get_mut(&(hub, key.to_string())) {
            Some(slot) => {
                slot.went_down |= went_down;
                slot.state = state;
            }
            None => {
                slots.insert((hub, key.to_string()), Slot { state, went_down });
            }
        }
        drop(slots);
        self.changed.notify_one();
    }

    /// Every slot that changed, as the updates to apply in order.
    fn take(&self) -> Vec<Update> {
        let slots = std::mem::take(&mut *self.slots.lock());
        let mut updates = Vec::with_capacity(slots.len());
        for ((hub, key), slot) in slots {
            if slot.went_down && slot.state.is_some() {
                updates.push((hub, key.clone(), None));
            }
            updates.push((hub, key, slot.state));
        }
        updates
    }
}

/// The event stream of [`GrpcBackend::subscribe`](Backend::subscribe). Dropping it (the
/// registry's driver ended: shutdown, or the registry dropped) aborts the merge task and with
/// it every hub stream, so the hubs stop sending — also while the backend itself lives on in
/// controller handles.
pub(super) struct Subscription {
    /// Boxed: the receiver is `!Unpin`.
    events: Pin<Box<async_channel::Receiver<BackendEvent>>>,
    merge: tokio::task::AbortHandle,
}

impl Stream for Subscription {
    type Item = BackendEvent;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<BackendEvent>> {
        self.events.as_mut().poll_next(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.merge.abort();
    }
}

impl Subscription {
    /// Starts the per-key streams and the merge task on `runtime`.
    pub(super) fn start(runtime: &tokio::runtime::Handle, plan: Plan) -> Self {
        let (tx, rx) = async_channel::bounded::<BackendEvent>(EVENTS_BUFFER);
        let merge = runtime.spawn(async move {
            let latest = std::sync::Arc::new(Latest::default());
            // Dropped with this task (the subscriber's stream dropped), the set aborts the
            // per-key tasks, whose `HubStream`s then close.
            let mut tasks = tokio::task::JoinSet::new();
            for (hub, (url, endpoint)) in plan.hubs.iter().enumerate() {
                // The keys' streams spread over connections of `per_connection` streams each,
                // so a server's cap on one connection's streams never leaves a key waiting
                // for a slot that a never-ending stream holds. The connections close with
                // the tasks' last clients.
                let mut client = None;
                for (index, key) in plan.keys.iter().enumerate() {
                    if index % plan.per_connection == 0 {
                        client = Some(ReactiveLockGrpcClient::with_interceptor(
                            endpoint.connect_lazy(),
                            AddToken(plan.token.clone()),
                        ));
                    }
                    let Some(client) = client.clone() else {
                        continue;
                    };
                    tasks.spawn(follow_key(
                        HubKey {
                            hub,
                            url: url.clone(),
                            key: key.clone(),
                            instance: plan.instance.clone(),
                            open_timeout: plan.open_timeout,
                        },
                        client,
                        latest.clone(),
                    ));
                }
            }
            Merge::new(plan.instance, plan.hubs.len(), tx)
                .run(&latest)
                .await;
            drop(tasks);
        });
        Subscription {
            events: Box::pin(rx),
            merge: merge.abort_handle(),
        }
    }
}

/// One hub's stream of one key.
struct HubKey {
    hub: usize,
    url: String,
    key: String,
    instance: String,
    open_timeout: Duration,
}

/// The delays between a stream's reopening attempts: 50 ms doubling to 2 s, each plus a
/// random part of up to itself. The jitter matters after a hub restart: every client's
/// streams fail at the same instant, and without it they would all come back at the same
/// instants, each time as one burst against the hub.
fn reconnect_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Follows one key on one hub for as long as the subscription lives: opens the stream,
/// forwards every notification, reports the stream down (`None`) when it fails or ends, and
/// reopens it with jittered backoff ([`reconnect_backoff`]).
async fn follow_key(at: HubKey, client: Client, latest: std::sync::Arc<Latest>) {
    let HubKey {
        hub,
        url,
        key,
        instance,
        open_timeout,
    } = at;
    let mut backoff = reconnect_backoff();
    loop {
        // Opening is bounded up to the first message: a hub that accepts the connection but
        // never answers is retried, not waited on.
        let opened = tokio::time::timeout(open_timeout, async {
            let mut stream = open_stream(client.clone(), key.clone(), instance.clone()).await?;
            let first = stream.messages.message().await?;
            Ok::<_, tonic::Status>((stream, first))
        })
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no first message within {open_timeout:?}"
            )))
        });
        match opened {
            Ok((mut stream, Some(first))) => {
                // Only a stream that delivered its first message resets the backoff: one
                // that opens and then fails (a key the hub cannot send) must not be retried
                // in a tight loop.
                backoff = reconnect_backoff();
                let mut next = Some(first);
                while let Some(n) = next {
                    latest.put(hub, &key, Some(n));
                    next = match stream.messages.message().await {
                        Ok(n) => n,
                        Err(status) => {
                            tracing::warn!(hub = %url, key, %status, "reactive-lock: hub stream failed; reconnecting");
                            None
                        }
                    };
                }
                tracing::warn!(hub = %url, key, "reactive-lock: hub stream ended; reconnecting");
            }
            Ok((_, None)) => {
                tracing::warn!(hub = %url, key, "reactive-lock: hub stream ended before its first message; reconnecting");
            }
            Err(status) => {
                tracing::debug!(hub = %url, key, %status, "reactive-lock: hub unreachable");
            }
        }
        latest.put(hub, &key, None);
        // Unbounded attempts: `next` always yields.
        let delay = backoff.next().unwrap_or(Duration::from_secs(2));
        tokio::time::sleep(delay).await;
    }
}

/// The merge: per key, the latest state of every hub; per hub and key, whether it is up.
struct Merge {
    instance: String,
    hubs: usize,
    events: async_channel::Sender<BackendEvent>,
    states: HashMap<String, Vec<Option<LockStatusNotification>>>,
    up: HashMap<(usize, String), bool>,
    connected: bool,
    /// Per key, the other instances' entries last sent: a notification that changed only
    /// this instance's own entry (the echo of its publish) is not passed on.
    last_sent: HashMap<String, Vec<Entry>>,
}

impl Merge {
    fn new(instance: String, hubs: usize, events: async_channel::Sender<BackendEvent>) -> Self {
        Merge {
            instance,
            hubs,
            events,
            states: HashMap::new(),
            up: HashMap::new(),
            connected: true,
            last_sent: HashMap::new(),
        }
    }

    /// Applies the streams' news until the subscriber is gone (the stream tasks end with
    /// this task).
    async fn run(mut self, latest: &Latest) {
        loop {
            // Registered before taking: news put after the take wakes this wait.
            let changed = latest.changed.notified();
            let updates = latest.take();
            if updates.is_empty() {
                changed.await;
                continue;
            }
            for (hub, key, update) in updates {
                if self.apply(hub, key, update).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One hub's update of one key; `Err` once the subscriber has gone.
    async fn apply(
        &mut self,
        hub: usize,
        key: String,
        update: Option<LockStatusNotification>,
    ) -> Result<(), ()> {
        let hubs = self.hubs;
        let per_hub = self
            .states
            .entry(key.clone())
            .or_insert_with(|| vec![None; hubs]);
        let was_up = self.up.get(&(hub, key.clone())).copied();
        match update {
            Some(n) => {
                per_hub[hub] = Some(n);
                self.up.insert((hub, key.clone()), true);
                if was_up == Some(false) {
                    send(&self.events, BackendEvent::Reconnected).await?;
                }
            }
            None => {
                // A hub that dropped out no longer speaks for anyone.
                per_hub[hub] = None;
                self.up.insert((hub, key.clone()), false);
            }
        }
        let per_hub = &self.states[&key];
        let any_up = self.up.values().any(|&u| u);
        if self.connected && !any_up {
            self.connected = false;
            self.last_sent.clear();
            return send(&self.events, BackendEvent::Disconnected).await;
        }
        self.connected = any_up;
        if per_hub.iter().all(Option::is_none) {
            // No hub serves this key while others still work: this key alone is Unknown,
            // and its next snapshot (after a reconnect) goes through. Also when this stream
            // never delivered its first message: the registry's state of the key then comes
            // from its first read, which nothing here would ever update.
            if self.last_sent.remove(&key).is_some() || was_up.is_none() {
                send(&self.events, BackendEvent::KeyDisconnected(key)).await?;
            }
            return Ok(());
        }
        let snapshot = merge(&key, per_hub);
        let mut others: Vec<Entry> = snapshot
            .entries
            .iter()
            .filter(|e| e.instance != self.instance)
            .cloned()
            .collect();
        others.sort_by(|a, b| a.instance.cmp(&b.instance));
        if self.last_sent.get(&key) == Some(&others) {
            return Ok(());
        }
        self.last_sent.insert(key, others);
        send(&self.events, BackendEvent::Snapshot(snapshot)).await
    }
}

async fn send(events: &async_channel::Sender<BackendEvent>, event: BackendEvent) -> Result<(), ()> {
    events.send(event).await.map_err(|_| ())
}

/// Merges the hubs' states of one key per instance (newest `validUntil` wins).
pub(super) fn merge(key: &str, per_hub: &[Option<LockStatusNotification>]) -> Snapshot {
    let mut merged: HashMap<&str, &proto::InstanceLockStatus> = HashMap::new();
    for notification in per_hub.iter().flatten() {
        for (instance, status) in &notification.instances_status {
            let newer = match merged.get(instance.as_str()) {
                None => true,
                Some(held) => {
                    held.valid_until.as_ref().map(store_time)
                        < status.valid_until.as_ref().map(store_time)
                }
            };
            if newer {
                merged.insert(instance, status);
            }
        }
    }
    let entries = merged
        .into_iter()
        .map(|(instance, status)| {
            let valid_until = status
                .valid_until
                .as_ref()
                .map(store_time)
                .unwrap_or(StoreTime::UNIX_EPOCH);
            // Empty lock data reads as none, as the .NET client reads it (`IsNullOrEmpty`).
            let data = status.lock_data.clone().filter(|data| !data.is_empty());
            Entry::new(instance, status.is_busy, data, valid_until)
                .with_seq(valid_until.as_unix_nanos())
        })
        .collect();
    Snapshot::new(key, entries, StoreTime::now_system())
}

/// Opens a subscription stream for `key` on one hub (first message: key and instance),
/// asking the hub not to send this instance's own changes back.
pub(super) async fn open_stream(
    client: Client,
    key: String,
    instance: String,
) -> Result<HubStream, tonic::Status> {
    // The request stream stays open while the `HubStream` lives, so the hub keeps the
    // subscription; it ends when the `HubStream` is dropped.
    let (open, closed) = tokio::sync::oneshot::channel::<()>();
    let until_dropped = futures_lite::stream::once_future(async move {
        let _ = closed.await;
    })
    .filter_map(|()| None::<LockStatusRequest>);
    let requests = futures_lite::stream::once(first_message(key, instance)).chain(until_dropped);
    Ok(HubStream {
        messages: subscribe_with(client, requests).await?,
        _open: open,
    })
}

/// One hub's subscription stream for one key. Dropping it ends the request stream as well
/// as the response: with both halves gone the h2 stream closes (RST_STREAM) and the hub
/// drops the subscriber. A request stream left pending would keep the h2 stream, and the
/// hub's sending to it, alive after the response is gone.
pub(super) struct HubStream {
    pub(super) messages: tonic::Streaming<LockStatusNotification>,
    _open: tokio::sync::oneshot::Sender<()>,
}

/// Reads `key`'s current state from one hub: the first message of a subscription whose
/// request stream ends after naming the key, so that dropping the response once it is read
/// closes the h2 stream (see [`HubStream`]).
pub(super) async fn read_once(
    client: Client,
    key: String,
    instance: String,
) -> Result<LockStatusNotification, tonic::Status> {
    let requests = futures_lite::stream::once(first_message(key, instance));
    let mut stream = subscribe_with(client, requests).await?;
    stream
        .message()
        .await?
        .ok_or_else(|| tonic::Status::unavailable("stream closed"))
}

pub(super) fn first_message(key: String, instance: String) -> LockStatusRequest {
    LockStatusRequest {
        lock_key: key,
        instance_id: instance,
        is_busy: false,
        lock_data: None,
        valid_until: None,
    }
}

pub(super) async fn subscribe_with(
    mut client: Client,
    requests: impl Stream<Item = LockStatusRequest> + Send + 'static,
) -> Result<tonic::Streaming<LockStatusNotification>, tonic::Status> {
    let mut request = tonic::Request::new(requests);
    request.metadata_mut().insert(
        SKIP_OWN_HEADER,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    Ok(client.subscribe_lock_status(request).await?.into_inner())
}
