//! [`Shutdown`]: the caller's shutdown future, pollable from several places in turn.
//!
//! [`crate::run`] takes any `Future<Output = ()>` as its shutdown signal (mini-redis style).
//! The reconnect loop and the session both wait on it in `select!`s that may drop the wait
//! half-way; wrapping the pinned future here remembers once it has fired, so later waits
//! return at once instead of polling a finished future.

use std::future::Future;
use std::pin::Pin;

/// The shutdown signal: fires once, stays fired.
#[derive(Debug)]
pub(crate) struct Shutdown<'a, F> {
    /// The caller's future, pinned by [`crate::run`].
    signal: Pin<&'a mut F>,
    /// True once `signal` has completed.
    fired: bool,
}

impl<'a, F: Future<Output = ()>> Shutdown<'a, F> {
    /// Wrap the pinned signal.
    pub(crate) fn new(signal: Pin<&'a mut F>) -> Self {
        Shutdown {
            signal,
            fired: false,
        }
    }

    /// Wait until shutdown is requested; returns at once if it already was. Cancel safe.
    pub(crate) async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }
}
