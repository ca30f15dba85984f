//! Opaque TCP: copying both ways until each side closes, and counting what passed.

use tokio::io::{AsyncRead, AsyncWrite};

use crate::telemetry::{TcpKey, Telemetry};

/// Copies between the side that connected (`client`) and the side it reached (`server`),
/// half-closes passed through, then records the connection. Bytes are counted as Istio does:
/// `received` in the request direction (client to server), `sent` in the response direction.
pub async fn pipe<C, S>(telemetry: &Telemetry, key: TcpKey, client: &mut C, server: &mut S)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    telemetry.record_tcp(key.clone(), |s| s.opened += 1);
    let copied = tokio::io::copy_bidirectional(client, server).await;
    telemetry.record_tcp(key, |s| {
        s.closed += 1;
        if let Ok((request, response)) = copied {
            s.bytes_received += request;
            s.bytes_sent += response;
        }
    });
}
