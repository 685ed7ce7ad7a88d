//! Attacks: what the saboteurs do besides lying, to test a master against hostile workers
//! over real sockets (the attacks of the security review, `grid_poc.py`'s among them). The
//! lies themselves are [`crate::sabotage`]'s; this module decides how attackers connect,
//! which identity each connection uses, and what they do with their leases.
//!
//! - [`Attack`]: the modes (sybil, rotate, release, drop, hoard).
//! - [`Handling`]: what a simulated worker does with an assignment (compute it, hand it back,
//!   or sit on it).
//! - [`Turns`]: the connection order of a sybil run: attackers one after the other, honest
//!   workers only once every attacker has had its first try.
//! - [`source_address`]: which local address the i-th worker of a side connects from.
//! - [`fresh_identity`]: a new random worker id, shaped like a native worker's.
//!
//! Sleepers are not an attack of their own here: `--attack sleeper` is
//! [`Sabotage::Sleeper`], the colluding lie after some honest results.

use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::sabotage::Sabotage;

/// What the saboteurs do besides lying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Every attacker answers every assignment with [`crate::sabotage::forged_output`] (one
    /// agreed forgery, whatever the input), and the attackers connect first, one after the
    /// other, before any honest worker starts to: they hold the oldest sessions, which the
    /// master serves first (review C1).
    Sybil,
    /// Lies as the run's [`Sabotage`] says, but every connection uses a fresh identity
    /// ([`fresh_identity`]), and the worker reconnects after every `after` results sent:
    /// whatever the master holds against an identity is left behind.
    Rotate {
        /// Results per connection (at least 1).
        after: u64,
    },
    /// Takes every lease and hands it straight back (`release`); never computes (review C2).
    Release,
    /// Holds every lease without computing, drops the connection (no close frame) `hold`
    /// after the first assignment of the session, reconnects under the same identity, and so
    /// on (review C2, by disconnects).
    Drop {
        /// How long each connection holds its leases.
        hold: Duration,
    },
    /// `--attack slots`: announces many slots (the run's attacker slots,
    /// [`grid_protocol::MAX_SLOTS`] by default) and sits on every lease without ever answering.
    Hoard,
}

/// What a simulated worker does with an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handling {
    /// Queue it, compute it and send the result (honestly or not).
    Compute,
    /// Hand it back at once with `release`.
    Release,
    /// Keep the lease and never answer.
    Hold,
}

impl Attack {
    /// The name on the command line (`--attack`) and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Sybil => "sybil",
            Attack::Rotate { .. } => "rotate",
            Attack::Release => "release",
            Attack::Drop { .. } => "drop",
            Attack::Hoard => "slots",
        }
    }

    /// How attackers lie when the run says `configured`: sybils all tell the one forgery.
    pub fn lie(self, configured: Sabotage) -> Sabotage {
        match self {
            Attack::Sybil => Sabotage::Forged,
            _ => configured,
        }
    }

    /// Whether the attack computes at all (and so lies): false for those that only take
    /// leases.
    pub fn computes(self) -> bool {
        self.handling() == Handling::Compute
    }

    pub(crate) fn handling(self) -> Handling {
        match self {
            Attack::Sybil | Attack::Rotate { .. } => Handling::Compute,
            Attack::Release => Handling::Release,
            Attack::Drop { .. } | Attack::Hoard => Handling::Hold,
        }
    }
}

/// The order in which a sybil run connects: attacker `k` (counting attackers only, from 0)
/// makes its first connection once attackers `0..k` have had their first try (welcomed or
/// not), and honest workers once all of them have. Later reconnects do not wait.
#[derive(Debug)]
pub(crate) struct Turns {
    /// How many attackers have had their first try.
    tried: watch::Sender<u32>,
    attackers: u32,
}

impl Turns {
    pub(crate) fn new(attackers: u32) -> Self {
        Turns {
            tried: watch::Sender::new(0),
            attackers,
        }
    }

    /// Resolves when attacker `ordinal` (`None`: an honest worker) may connect.
    pub(crate) async fn wait(&self, ordinal: Option<u32>) {
        let turn = ordinal.unwrap_or(self.attackers);
        let mut tried = self.tried.subscribe();
        // The sender lives as long as `self`: this cannot fail while anyone waits.
        let _ = tried.wait_for(|tried| *tried >= turn).await;
    }

    /// Attacker `ordinal` has had its first try: the next one may go.
    pub(crate) fn tried(&self, ordinal: u32) {
        self.tried
            .send_modify(|tried| *tried = (*tried).max(ordinal + 1));
    }
}

/// The address the `ordinal`-th worker of one side (honest or attacking, counted from 0)
/// connects from: `addresses` round robin, `None` (the operating system's choice) when empty.
pub fn source_address(addresses: &[IpAddr], ordinal: u32) -> Option<IpAddr> {
    let count = addresses.len();
    (count > 0).then(|| addresses[ordinal as usize % count])
}

/// A new random identity, as a freshly installed `grid-worker` makes one
/// (`native-` and 32 hex digits): rotating attackers look like new volunteers.
pub fn fresh_identity() -> String {
    format!("native-{:032x}", rand::random::<u128>())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use grid_protocol::is_valid_worker_id;

    use super::*;

    #[test]
    fn source_addresses_go_round_robin() {
        let addresses: Vec<IpAddr> = ["127.0.1.1", "127.0.2.1", "127.0.3.1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let picked: Vec<Option<IpAddr>> = (0..7).map(|i| source_address(&addresses, i)).collect();
        let expected: Vec<Option<IpAddr>> = [0, 1, 2, 0, 1, 2, 0]
            .iter()
            .map(|&i| Some(addresses[i]))
            .collect();
        assert_eq!(picked, expected);
        assert_eq!(source_address(&[], 5), None);
        assert_eq!(
            source_address(&addresses[..1], u32::MAX),
            Some(addresses[0])
        );
    }

    #[test]
    fn fresh_identities_are_valid_and_new() {
        let ids: HashSet<String> = (0..1000).map(|_| fresh_identity()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| is_valid_worker_id(id)), "{ids:?}");
    }

    #[test]
    fn only_sybils_change_the_lie() {
        assert_eq!(Attack::Sybil.lie(Sabotage::Random), Sabotage::Forged);
        let rotate = Attack::Rotate { after: 4 };
        assert_eq!(rotate.lie(Sabotage::Colluding), Sabotage::Colluding);
        assert!(rotate.computes() && Attack::Sybil.computes());
        assert!(!Attack::Release.computes() && !Attack::Hoard.computes());
        let drop = Attack::Drop {
            hold: Duration::from_secs(1),
        };
        assert_eq!(drop.handling(), Handling::Hold);
        assert_eq!(Attack::Release.handling(), Handling::Release);
    }

    #[tokio::test]
    async fn sybils_connect_in_turn_and_honest_workers_last() {
        let turns = std::sync::Arc::new(Turns::new(2));
        let (order, mut log) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = tokio::task::JoinSet::new();
        // Spawned in the wrong order on purpose.
        for ordinal in [None, Some(1), None, Some(0)] {
            let (turns, order) = (std::sync::Arc::clone(&turns), order.clone());
            tasks.spawn(async move {
                turns.wait(ordinal).await;
                let _ = order.send(ordinal);
                if let Some(ordinal) = ordinal {
                    turns.tried(ordinal);
                }
            });
        }
        drop(order);
        while tasks.join_next().await.is_some() {}
        let mut seen = Vec::new();
        while let Some(ordinal) = log.recv().await {
            seen.push(ordinal);
        }
        assert_eq!(seen, [Some(0), Some(1), None, None]);
    }
}
