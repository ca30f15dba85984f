//! The one body type every hop carries, and its constructors: a request or response body is
//! either hyper's incoming stream or bytes the sidecar made, boxed behind one type so routing,
//! retries and local replies need not care which.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

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
