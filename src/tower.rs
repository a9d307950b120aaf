//! A [tower] layer that keeps a [`TrackerController`] incremented while HTTP requests are in
//! flight, on the server side (around handlers) or the client side (around an outbound
//! client).
//!
//! A request counts from the moment the service is called until its response body has been
//! sent to the end or dropped, so a streaming response keeps it in flight. Every way a request
//! can end gives the count back: the body ends, the response or the future is dropped (a
//! client that disconnects, a timeout, a `select!` that took another branch), the inner
//! service returns an error, or a handler panics (the unwind drops the future). An optional
//! predicate decides per request whether it counts at all.
//!
//! The model is tower-http's `InFlightRequestsLayer` (a handle, a layer, a service and a
//! response body that decrements on drop); the difference is that the count is a tracker's,
//! so while a request is in flight on one instance every instance sees the key blocked.
//!
//! The layer needs no runtime: it only wraps futures and bodies.
//!
//! ```
//! use reactive_lock::tower::InFlightLayer;
//! use reactive_lock::TrackerController;
//! use tower::{Layer, Service, ServiceExt};
//!
//! # futures_lite::future::block_on(async {
//! let ctrl = TrackerController::new(1)?;
//! let handler = tower::service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! });
//! let mut service = InFlightLayer::new(ctrl.clone()).layer(handler);
//! let response = service.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
//! assert_eq!(ctrl.count(), 1); // the body has not been sent yet
//! assert!(ctrl.state().is_blocked());
//! drop(response);
//! assert_eq!(ctrl.count(), 0);
//! # Ok::<(), reactive_lock::Error>(())
//! # }).unwrap();
//! ```
//!
//! [tower]: https://docs.rs/tower

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{OwnedTrackerGuard, TrackerController};

/// Decides per request whether it counts as in flight. Implemented by [`CountAll`] and by
/// every `Fn(&http::Request<B>) -> bool`.
///
/// # Examples
///
/// ```
/// use reactive_lock::tower::{CountAll, CountRequest};
///
/// let request = http::Request::builder().uri("/health").body(()).unwrap();
/// assert!(CountAll.counts(&request));
/// let not_health = |r: &http::Request<()>| r.uri().path() != "/health";
/// assert!(!not_health.counts(&request));
/// ```
pub trait CountRequest<B> {
    /// Whether `request` counts as in flight.
    fn counts(&self, request: &http::Request<B>) -> bool;
}

/// The default predicate: every request counts.
///
/// # Examples
///
/// ```
/// use reactive_lock::tower::{CountAll, CountRequest};
/// assert!(CountAll.counts(&http::Request::new(())));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct CountAll;

impl<B> CountRequest<B> for CountAll {
    fn counts(&self, _request: &http::Request<B>) -> bool {
        true
    }
}

impl<B, F> CountRequest<B> for F
where
    F: Fn(&http::Request<B>) -> bool,
{
    fn counts(&self, request: &http::Request<B>) -> bool {
        self(request)
    }
}

/// Layer that wraps a service in [`InFlight`], counting its requests on a
/// [`TrackerController`].
///
/// # Examples
///
/// On an axum router: `Router::new().route(..).layer(InFlightLayer::new(ctrl))`. Counting
/// only some requests:
///
/// ```
/// use reactive_lock::tower::InFlightLayer;
/// use reactive_lock::TrackerController;
///
/// let ctrl = TrackerController::new(1)?;
/// let layer = InFlightLayer::new(ctrl)
///     .with_predicate(|r: &http::Request<()>| r.method() == http::Method::POST);
/// # let _ = layer;
/// # Ok::<(), reactive_lock::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct InFlightLayer<P = CountAll> {
    controller: TrackerController,
    predicate: P,
}

impl InFlightLayer {
    /// A layer counting every request on `controller`.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let _layer = reactive_lock::tower::InFlightLayer::new(ctrl);
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn new(controller: TrackerController) -> Self {
        InFlightLayer {
            controller,
            predicate: CountAll,
        }
    }
}

impl<P> InFlightLayer<P> {
    /// Counts only the requests `predicate` accepts (see [`CountRequest`]). It runs once per
    /// request, when the service is called.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let _layer = reactive_lock::tower::InFlightLayer::new(ctrl)
    ///     .with_predicate(|r: &http::Request<()>| r.uri().path().starts_with("/payments"));
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn with_predicate<Q>(self, predicate: Q) -> InFlightLayer<Q> {
        InFlightLayer {
            controller: self.controller,
            predicate,
        }
    }

    /// The controller requests are counted on.
    ///
    /// # Examples
    ///
    /// ```
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let layer = reactive_lock::tower::InFlightLayer::new(ctrl);
    /// assert_eq!(layer.controller().count(), 0);
    /// # Ok::<(), reactive_lock::Error>(())
    /// ```
    pub fn controller(&self) -> &TrackerController {
        &self.controller
    }
}

impl<S, P: Clone> tower_layer::Layer<S> for InFlightLayer<P> {
    type Service = InFlight<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlight {
            inner,
            controller: self.controller.clone(),
            predicate: self.predicate.clone(),
        }
    }
}

/// Service that counts requests in flight on a [`TrackerController`]; built by
/// [`InFlightLayer`]. Its responses carry an [`InFlightBody`].
///
/// # Examples
///
/// ```
/// use reactive_lock::tower::{InFlight, InFlightLayer};
/// use tower_layer::Layer;
///
/// let ctrl = reactive_lock::TrackerController::new(1)?;
/// let service: InFlight<(), _> = InFlightLayer::new(ctrl).layer(());
/// # let _ = service;
/// # Ok::<(), reactive_lock::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct InFlight<S, P = CountAll> {
    inner: S,
    controller: TrackerController,
    predicate: P,
}

impl<S, P, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for InFlight<S, P>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    P: CountRequest<ReqBody>,
{
    type Response = http::Response<InFlightBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Counted before the inner service sees the request: a handler that runs
        // synchronously inside `call` is already in flight.
        let guard = self
            .predicate
            .counts(&request)
            .then(|| self.controller.enter_owned(None));
        ResponseFuture {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project! {
    /// Future of [`InFlight`]: the inner service's future holding the request's count.
    /// Dropping it before it completes gives the count back.
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the inner future and decrements the count (if the request counted).
    ///
    /// # Examples
    ///
    /// Returned by `InFlight::call`; see the [module docs](self).
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<OwnedTrackerGuard>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<InFlightBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // An error ends the request: the guard is dropped with the future's state here.
        Poll::Ready(result.map(|response| {
            let guard = this.guard.take();
            response.map(|body| InFlightBody::new(body, guard))
        }))
    }
}

pin_project! {
    /// Response body of [`InFlight`]: the inner body holding the request's count until it
    /// has been read to the end or dropped.
    ///
    /// # Examples
    ///
    /// Returned in the responses of `InFlight`; see the [module docs](self).
    pub struct InFlightBody<B> {
        #[pin]
        inner: B,
        guard: Option<OwnedTrackerGuard>,
    }
}

impl<B> InFlightBody<B> {
    fn new(inner: B, guard: Option<OwnedTrackerGuard>) -> Self {
        // A body a server never polls (empty, or a HEAD answer) is dropped instead: the
        // drop gives the count back.
        InFlightBody { inner, guard }
    }

    /// Whether this body still holds its request's count.
    ///
    /// # Examples
    ///
    /// ```
    /// use reactive_lock::tower::InFlightLayer;
    /// use tower::{Layer, ServiceExt};
    ///
    /// # futures_lite::future::block_on(async {
    /// let ctrl = reactive_lock::TrackerController::new(1)?;
    /// let service = InFlightLayer::new(ctrl)
    ///     .with_predicate(|r: &http::Request<()>| r.uri().path() != "/health")
    ///     .layer(tower::service_fn(|_: http::Request<()>| async {
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
    ///     }));
    /// let counted = service.clone().oneshot(http::Request::new(())).await.unwrap();
    /// assert!(counted.body().is_counted());
    /// let health = http::Request::builder().uri("/health").body(()).unwrap();
    /// let uncounted = service.oneshot(health).await.unwrap();
    /// assert!(!uncounted.body().is_counted());
    /// # Ok::<(), reactive_lock::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn is_counted(&self) -> bool {
        self.guard.is_some()
    }
}

impl<B: Body> Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        // The end of the body (or an error, which ends it too) ends the request.
        if frame.is_none() || matches!(frame, Some(Err(_))) || inner.is_end_stream() {
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> core::fmt::Debug for InFlightBody<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InFlightBody")
            .field("counted", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}
