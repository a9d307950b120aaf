//! The hub driven in-process through its gRPC service (`SetStatus`, and
//! `SubscribeLockStatus` streams fed frame by frame) with arbitrary sequences of statuses:
//! any keys and instances (empty ones too), timestamps of any range (negative or huge
//! seconds, out-of-range nanos, none), oversized lock data, garbage frames, streams closed
//! or dropped midway. Small limits put every limit in play.
//!
//! Checked: no panic; every notification names its key, holds only instances some status
//! named, lock data within the limit, busy entries only where a busy status was sent, and
//! fits `max_notification_size`; and a key is never reported idle for an instance whose
//! every status was busy and valid for more than a minute yet (whichever of them the hub
//! holds, ordered however, that instance is busy).
//!
//! Input: a sequence of operations, each an opcode byte and its operands (see `Op::read`);
//! a read past the end stops the sequence.
use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_lite::{StreamExt, future};
use http_body::{Body, Frame};
use prost::Message;
use reactive_lock_backends::grpc::SKIP_OWN_HEADER;
use reactive_lock_backends::grpc::proto::reactive_lock_grpc_server::ReactiveLockGrpc;
use reactive_lock_backends::grpc::proto::{LockStatusNotification, LockStatusRequest};
use reactive_lock_backends::grpc::server::{Hub, HubLimits};
use tonic::codec::{Codec, Streaming};
use tonic::{Request, Status};

/// Reads operands off the input; `None` once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }
    fn slice(&mut self, len: usize) -> Option<Vec<u8>> {
        let len = len.min(self.0.len());
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(head.to_vec())
    }
    /// A name: one of four short ones (so statuses meet on keys and instances), or any
    /// bytes, lossily UTF-8 (empty included).
    fn name(&mut self, prefix: &str) -> Option<String> {
        let b = self.byte()?;
        if b < 0xf0 {
            Some(format!("{prefix}{}", b % 4))
        } else {
            let len = usize::from(self.byte()? % 32);
            Some(String::from_utf8_lossy(&self.slice(len)?).into_owned())
        }
    }
    fn request(&mut self) -> Option<LockStatusRequest> {
        let flags = self.byte()?;
        let lock_key = self.name("k")?;
        let instance_id = self.name("i")?;
        let lock_data = match flags >> 1 & 3 {
            0 => None,
            1 => {
                let len = usize::from(self.byte()?);
                Some(String::from_utf8_lossy(&self.slice(len)?).into_owned())
            }
            // Oversized: up to 64 KiB.
            2 => Some("x".repeat(usize::from(u16::from_be_bytes(self.bytes()?)))),
            _ => Some(String::new()),
        };
        let valid_until = match flags >> 3 & 3 {
            0 => None,
            // Around now: in the past, about to expire, valid for minutes or more.
            1 | 2 => {
                let offset = i64::from(i16::from_be_bytes(self.bytes()?));
                let nanos = i32::from_be_bytes(self.bytes()?);
                Some(prost_types::Timestamp {
                    seconds: unix_now_secs() + offset,
                    nanos: nanos.rem_euclid(1_000_000_000),
                })
            }
            // Anything: negative or huge seconds, out-of-range nanos.
            _ => Some(prost_types::Timestamp {
                seconds: i64::from_be_bytes(self.bytes()?),
                nanos: i32::from_be_bytes(self.bytes()?),
            }),
        };
        Some(LockStatusRequest {
            lock_key,
            instance_id,
            is_busy: flags & 1 == 1,
            lock_data,
            valid_until,
        })
    }
}

enum Op {
    SetStatus(LockStatusRequest),
    /// Opens a subscription whose first message is this request (key and instance).
    Subscribe {
        first: LockStatusRequest,
        skip_own: bool,
    },
    /// A status sent on an open subscription (the hub applies it to that subscription's key).
    Stream {
        sub: u8,
        request: LockStatusRequest,
    },
    /// Raw bytes on a subscription's request stream (partial or garbage frames).
    RawFrame {
        sub: u8,
        bytes: Vec<u8>,
    },
    /// The client ends its request half.
    CloseRequests {
        sub: u8,
    },
    /// The client drops the response stream.
    DropSubscription {
        sub: u8,
    },
    Forget,
    Check,
}

impl Op {
    fn read(input: &mut Input<'_>) -> Option<Op> {
        Some(match input.byte()? % 8 {
            0 => Op::SetStatus(input.request()?),
            1 => Op::Subscribe {
                skip_own: input.byte()? % 2 == 1,
                first: input.request()?,
            },
            2 => Op::Stream {
                sub: input.byte()?,
                request: input.request()?,
            },
            3 => {
                let sub = input.byte()?;
                let len = usize::from(input.byte()?);
                Op::RawFrame {
                    sub,
                    bytes: input.slice(len)?,
                }
            }
            4 => Op::CloseRequests { sub: input.byte()? },
            5 => Op::DropSubscription { sub: input.byte()? },
            6 => Op::Forget,
            _ => Op::Check,
        })
    }
}

/// A request body fed frame by frame from the fuzz input.
struct Frames(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|bytes| bytes.map(|b| Ok(Frame::data(b))))
    }
}

/// A gRPC message frame: uncompressed, length-prefixed.
fn frame(request: &LockStatusRequest) -> Bytes {
    let body = request.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

type Notifications =
    Pin<Box<dyn futures_lite::Stream<Item = Result<LockStatusNotification, Status>> + Send>>;

struct Subscription {
    key: String,
    requests: Option<tokio::sync::mpsc::UnboundedSender<Bytes>>,
    notifications: Option<Notifications>,
}

/// What the statuses sent so far allow the hub to hold for a (key, instance).
#[derive(Default)]
struct Sent {
    /// A `SetStatus` the hub answered with OK.
    accepted: Vec<LockStatusRequest>,
    /// Every status the hub may have taken: `accepted`, and those streamed (the hub
    /// answers those with nothing).
    maybe_taken: Vec<LockStatusRequest>,
}

struct Run {
    hub: Hub,
    limits: HubLimits,
    subscriptions: Vec<Subscription>,
    sent: HashMap<(String, String), Sent>,
    /// Keys that took raw frames.
    tainted: HashSet<String>,
}

fn unix_now_secs() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

/// The hub's reading of a timestamp, written apart from it: before the epoch reads as the
/// epoch, nanos clamped into range.
fn unix_nanos(t: &prost_types::Timestamp) -> u128 {
    if t.seconds < 0 {
        return 0;
    }
    u128::try_from(t.seconds).unwrap() * 1_000_000_000
        + u128::try_from(t.nanos.clamp(0, 999_999_999)).unwrap()
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Busy and valid for more than a minute after `now`.
fn busy_for_long(request: &LockStatusRequest, now: u128) -> bool {
    request.is_busy
        && request
            .valid_until
            .as_ref()
            .is_some_and(|t| unix_nanos(t) > now + 60_000_000_000)
}

impl Run {
    async fn apply(&mut self, op: Op) {
        match op {
            Op::SetStatus(request) => {
                let sent = self
                    .sent
                    .entry((request.lock_key.clone(), request.instance_id.clone()))
                    .or_default();
                if self
                    .hub
                    .set_status(Request::new(request.clone()))
                    .await
                    .is_ok()
                {
                    assert!(!request.lock_key.is_empty() && !request.instance_id.is_empty());
                    sent.accepted.push(request.clone());
                    sent.maybe_taken.push(request);
                }
            }
            Op::Subscribe { first, skip_own } => {
                if self.subscriptions.len() >= 16 {
                    return;
                }
                if let (tx, Ok(notifications)) = self.subscribe(&first, skip_own).await {
                    self.subscriptions.push(Subscription {
                        key: first.lock_key,
                        requests: Some(tx),
                        notifications: Some(notifications),
                    });
                }
            }
            Op::Stream { sub, mut request } => {
                let Some(subscription) = self.subscription(sub) else {
                    return;
                };
                let Some(requests) = &subscription.requests else {
                    return;
                };
                let _ = requests.send(frame(&request));
                // The hub applies a streamed status to the subscription's key.
                request.lock_key = subscription.key.clone();
                let sent = self
                    .sent
                    .entry((request.lock_key.clone(), request.instance_id.clone()))
                    .or_default();
                sent.maybe_taken.push(request);
            }
            Op::RawFrame { sub, bytes } => {
                if let Some(Subscription {
                    requests: Some(requests),
                    ..
                }) = self.subscription(sub)
                {
                    let _ = requests.send(bytes.into());
                }
                // Raw bytes may hold a status of any instance, or join the next frame into
                // one: what the hub may hold for this key is unknown from here on.
                if let Some(key) = self.subscription(sub).map(|s| s.key.clone()) {
                    self.tainted.insert(key);
                }
            }
            Op::CloseRequests { sub } => {
                if let Some(subscription) = self.subscription(sub) {
                    subscription.requests = None;
                }
            }
            Op::DropSubscription { sub } => {
                if let Some(subscription) = self.subscription(sub) {
                    subscription.notifications = None;
                }
            }
            Op::Forget => {
                self.hub.forget_idle_keys_now();
            }
            Op::Check => self.check().await,
        }
        // Lets the hub's stream readers take what was sent.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    fn subscription(&mut self, sub: u8) -> Option<&mut Subscription> {
        let len = self.subscriptions.len();
        (len > 0).then(|| &mut self.subscriptions[usize::from(sub) % len])
    }
}

impl Run {
    /// Opens a subscription; the hub's answer.
    async fn subscribe(
        &self,
        first: &LockStatusRequest,
        skip_own: bool,
    ) -> (
        tokio::sync::mpsc::UnboundedSender<Bytes>,
        Result<Notifications, Status>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(frame(first)).unwrap();
        let decoder =
            tonic_prost::ProstCodec::<LockStatusRequest, LockStatusRequest>::default().decoder();
        let streaming = Streaming::new_request(
            decoder,
            Frames(rx),
            None,
            Some(self.limits.max_message_size),
        );
        let mut request = Request::new(streaming);
        if skip_own {
            request
                .metadata_mut()
                .insert(SKIP_OWN_HEADER, "1".parse().unwrap());
        }
        let response = self.hub.subscribe_lock_status(request).await;
        (tx, response.map(tonic::Response::into_inner))
    }

    async fn check(&mut self) {
        // Everything delivered to the subscriptions so far.
        let mut delivered = Vec::new();
        for subscription in &mut self.subscriptions {
            let Some(stream) = subscription.notifications.as_mut() else {
                continue;
            };
            loop {
                match future::poll_once(stream.next()).await {
                    Some(Some(Ok(notification))) => {
                        delivered.push((subscription.key.clone(), notification));
                    }
                    // Ended with a status (stalled, refused): the stream ends next.
                    Some(Some(Err(_))) => {}
                    Some(None) => {
                        subscription.notifications = None;
                        break;
                    }
                    None => break,
                }
            }
        }
        for (key, notification) in &delivered {
            self.check_notification(key, notification);
        }
        // Each key's current state, as a new subscriber reads it.
        let mut keys: Vec<String> = self.sent.keys().map(|(key, _)| key.clone()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if key.is_empty() {
                continue;
            }
            let first = LockStatusRequest {
                lock_key: key.clone(),
                instance_id: "checker".into(),
                ..Default::default()
            };
            let (_requests, response) = self.subscribe(&first, false).await;
            // Refused (the hub holds max_keys keys): nothing to read.
            let Ok(mut stream) = response else { continue };
            let current = match future::poll_once(stream.next()).await {
                Some(Some(Ok(current))) => current,
                other => panic!("a new subscriber of {key:?} is sent the state at once: {other:?}"),
            };
            let now = now_nanos();
            self.check_notification(&key, &current);
            if self.tainted.contains(&key) {
                continue;
            }
            for ((k, instance), sent) in &self.sent {
                let busy_throughout = !sent.accepted.is_empty()
                    && sent.maybe_taken.iter().all(|r| busy_for_long(r, now));
                if k != &key || !busy_throughout {
                    continue;
                }
                let held = current.instances_status.get(instance);
                assert!(
                    held.is_some_and(|status| status.is_busy
                        && status
                            .valid_until
                            .as_ref()
                            .is_some_and(|t| unix_nanos(t) > now)),
                    "key {key:?} reported without {instance:?} busy, whose every status was \
                     busy for minutes: {held:?}; sent {:?}",
                    sent.maybe_taken
                );
            }
        }
    }

    fn check_notification(&self, key: &str, notification: &LockStatusNotification) {
        assert_eq!(notification.lock_key, key);
        assert!(
            notification.encoded_len() <= self.limits.max_notification_size,
            "a notification of {} bytes",
            notification.encoded_len()
        );
        for (instance, status) in &notification.instances_status {
            let data_len = status.lock_data.as_ref().map_or(0, String::len);
            assert!(data_len <= self.limits.max_lock_data_len);
            assert!(!instance.is_empty());
            if self.tainted.contains(key) {
                continue;
            }
            let sent = self
                .sent
                .get(&(key.to_string(), instance.clone()))
                .unwrap_or_else(|| panic!("{instance:?} on {key:?} was never sent"));
            assert!(
                !sent.maybe_taken.is_empty(),
                "{instance:?} on {key:?} was only refused"
            );
            assert!(
                !status.is_busy || sent.maybe_taken.iter().any(|r| r.is_busy),
                "{instance:?} on {key:?} reported busy but never sent busy"
            );
        }
    }
}

/// Runs one input; panics when an invariant fails.
pub fn check(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut limits = HubLimits::default();
        limits.max_message_size = 4096;
        limits.max_keys = 3;
        limits.max_instances_per_key = 3;
        limits.max_lock_data_len = 300;
        limits.subscriber_buffer = 2;
        limits.max_notification_size = 700;
        limits.first_message_timeout = Duration::from_millis(100);
        limits.forget_idle_keys_after = Duration::ZERO;
        let mut run = Run {
            hub: Hub::new(limits),
            limits,
            subscriptions: Vec::new(),
            sent: HashMap::new(),
            tainted: HashSet::new(),
        };
        let mut input = Input(data);
        for _ in 0..64 {
            let Some(op) = Op::read(&mut input) else {
                break;
            };
            run.apply(op).await;
        }
        run.check().await;
    });
}
