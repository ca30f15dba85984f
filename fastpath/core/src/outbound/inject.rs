//! Fault injection, the first per-route layer: a route's delay (slept here, before anything is
//! sent) and abort (answered by `mesh` instead of dispatching), rolled per request.

use std::time::Duration;

use rand::Rng;

use crate::fault::Abort;
use crate::routing::Route;

/// What the fault layer did to one request.
#[derive(Debug, Default)]
pub struct Applied {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Applied {
    /// Istio's `response_flags` for the request: `DI` delayed, `FI` aborted, `UO` refused by a
    /// circuit breaker (`overflowed`), `UT` the route's timeout passed (`timed_out`),
    /// comma-joined; empty for none.
    pub fn flags(&self, overflowed: bool, timed_out: bool) -> &'static str {
        let delayed = self.delay.is_some();
        match (delayed, self.abort.is_some(), overflowed, timed_out) {
            (true, true, ..) => "DI,FI",
            (false, true, ..) => "FI",
            (true, false, true, _) => "DI,UO",
            (false, false, true, _) => "UO",
            (true, false, false, true) => "DI,UT",
            (false, false, false, true) => "UT",
            (true, false, false, false) => "DI",
            (false, false, false, false) => "",
        }
    }
}

/// Rolls the route's fault for this request and sleeps its delay, if any.
pub async fn apply(route: &Route, headers: &http::HeaderMap) -> Applied {
    let Some((fault, when)) = &route.fault else {
        return Applied::default();
    };
    if !when.matches(headers) {
        return Applied::default();
    }
    let decision = {
        let mut rng = rand::rng();
        fault.decide(rng.random_range(0.0..100.0), rng.random_range(0.0..100.0))
    };
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    Applied {
        delay: decision.delay,
        abort: decision.abort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_name_everything_the_sidecar_did() {
        let delayed = Applied {
            delay: Some(Duration::from_millis(1)),
            abort: None,
        };
        assert_eq!(delayed.flags(false, false), "DI");
        assert_eq!(delayed.flags(true, false), "DI,UO");
        assert_eq!(delayed.flags(false, true), "DI,UT");
        assert_eq!(Applied::default().flags(true, false), "UO");
        assert_eq!(Applied::default().flags(false, true), "UT");
        assert_eq!(Applied::default().flags(false, false), "");
    }
}
