//! The one body type every hop carries, and its constructors: a request or response body is
//! either hyper's incoming stream or bytes the sidecar made, boxed behind one type so routing,
//! retries and local replies need not care which.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

pub fn incoming(body: Incoming) -> Body {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

/// Counts the data bytes that pass through `inner` into `seen`, shared with whoever reports
/// the exchange (`istio_request_bytes`): the body is streamed, never buffered to be measured.
pub fn counted(inner: Body, seen: Arc<AtomicU64>) -> Body {
    Counted { inner, seen }.boxed()
}

struct Counted {
    inner: Body,
    seen: Arc<AtomicU64>,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.seen.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
