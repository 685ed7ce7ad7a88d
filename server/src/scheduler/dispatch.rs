//! The dispatch cache: ready chunks held in memory so that handing out work does not cost a
//! query per assignment (BOINC's "feeder"). The database stays the truth — a lease exists only
//! once its batch commits, and the commit re-checks that the chunk still wants it — so a stale
//! cache can waste a round but never over-issue.

use std::collections::VecDeque;
use std::sync::Arc;

use grid_protocol::Task;

use crate::store::ReadyChunk;

/// One cached chunk and how many more replicas this master may still propose for it.
#[derive(Debug)]
struct Entry {
    chunk: ReadyChunk,
    remaining: i32,
}

/// A replica the cache proposes for one worker.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// Job id.
    pub job_id: i64,
    /// Chunk index.
    pub idx: i32,
    /// What to run.
    pub task: Arc<Task>,
    /// Chunk input.
    pub input: Arc<serde_json::Value>,
    /// Lease length.
    pub lease_seconds: i32,
}

/// Who a proposal is for: a worker identity and its origin (its network, or the identity
/// itself on a trusted network). A chunk goes to neither twice.
#[derive(Debug, Clone, Copy)]
pub struct Taker<'a> {
    /// The worker identity.
    pub worker_id: &'a str,
    /// Its origin.
    pub origin: &'a str,
}

impl Taker<'_> {
    fn may_take(&self, chunk: &ReadyChunk) -> bool {
        !chunk
            .holders
            .iter()
            .any(|h| h == self.worker_id || h == self.origin)
    }
}

/// Ready chunks in dispatch order (priority, then job, then index).
#[derive(Debug, Default)]
pub struct DispatchCache {
    entries: VecDeque<Entry>,
    /// The contents may no longer match the database (new job, reopened chunk, failed claim).
    stale: bool,
    /// The last load hit its limit: the database may hold more ready chunks than are cached.
    truncated: bool,
    /// Bumped on every load, so a worker asks the database for chunks of its own at most once
    /// per load.
    generation: u64,
}

impl DispatchCache {
    /// A cache that loads on first use.
    pub fn new() -> Self {
        DispatchCache {
            stale: true,
            ..DispatchCache::default()
        }
    }

    /// Forget the contents at the next opportunity.
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// Whether a load from the database is due before proposing work.
    pub fn needs_load(&self) -> bool {
        self.stale || (self.truncated && self.entries.is_empty())
    }

    /// The current load's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the database may hold ready chunks beyond the cached ones.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Replace the contents with a fresh load of at most `limit` rows.
    pub fn load(&mut self, chunks: Vec<ReadyChunk>, limit: usize) {
        self.truncated = chunks.len() >= limit;
        self.entries = chunks.into_iter().map(Entry::from).collect();
        self.stale = false;
        self.generation += 1;
    }

    /// Add chunks loaded for one worker, keeping dispatch order and skipping known ones.
    pub fn merge(&mut self, chunks: Vec<ReadyChunk>) {
        for chunk in chunks {
            let key = order_key(&chunk);
            let position = self
                .entries
                .iter()
                .position(|entry| order_key(&entry.chunk) >= key);
            match position {
                Some(i) if order_key(&self.entries[i].chunk) == key => {}
                Some(i) => self.entries.insert(i, Entry::from(chunk)),
                None => self.entries.push_back(Entry::from(chunk)),
            }
        }
    }

    /// Propose up to `count` chunks for `taker`, never one its identity or its origin ever
    /// had a replica of, and record both as holders.
    pub fn take_for(&mut self, taker: Taker<'_>, count: usize) -> Vec<Proposal> {
        let mut proposals = Vec::new();
        if count == 0 {
            return proposals;
        }
        for entry in self.entries.iter_mut() {
            if entry.remaining <= 0 || !taker.may_take(&entry.chunk) {
                continue;
            }
            entry.remaining -= 1;
            proposals.push(entry.propose_to(taker));
            if proposals.len() == count {
                break;
            }
        }
        while self.entries.front().is_some_and(|e| e.remaining <= 0) {
            self.entries.pop_front();
        }
        proposals
    }
}

impl DispatchCache {
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One entry for `taker` (used for the ringer pool: entries are reusable, each worker and
    /// each origin gets a given ringer at most once).
    pub fn take_for_one(&mut self, taker: Taker<'_>) -> Option<Proposal> {
        let start = rand::random_range(0..self.entries.len().max(1));
        let len = self.entries.len();
        (0..len)
            .map(|offset| (start + offset) % len)
            .find(|&i| taker.may_take(&self.entries[i].chunk))
            .map(|i| self.entries[i].propose_to(taker))
    }
}

fn order_key(chunk: &ReadyChunk) -> (i32, i64, i32) {
    // Higher priority first: negate it so the tuple sorts ascending.
    (chunk.priority.saturating_neg(), chunk.job_id, chunk.idx)
}

impl Entry {
    /// A proposal of this chunk for `taker`, whose identity and origin become holders.
    fn propose_to(&mut self, taker: Taker<'_>) -> Proposal {
        self.chunk.holders.push(taker.worker_id.to_owned());
        if taker.origin != taker.worker_id {
            self.chunk.holders.push(taker.origin.to_owned());
        }
        Proposal {
            job_id: self.chunk.job_id,
            idx: self.chunk.idx,
            task: self.chunk.task.clone(),
            input: self.chunk.input.clone(),
            lease_seconds: self.chunk.lease_seconds,
        }
    }
}

impl From<ReadyChunk> for Entry {
    fn from(chunk: ReadyChunk) -> Self {
        Entry {
            remaining: chunk.wanted,
            chunk,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(job_id: i64, idx: i32, priority: i32, wanted: i32) -> ReadyChunk {
        ReadyChunk {
            job_id,
            idx,
            priority,
            task: Arc::new(Task::kernel("echo")),
            input: Arc::new(serde_json::Value::Null),
            lease_seconds: 60,
            wanted,
            holders: Vec::new(),
        }
    }

    /// A worker on a trusted network: its origin is its identity.
    fn alone(worker_id: &str) -> Taker<'_> {
        Taker {
            worker_id,
            origin: worker_id,
        }
    }

    #[test]
    fn replicas_of_one_chunk_go_to_distinct_networks() {
        let mut cache = DispatchCache::new();
        cache.load(vec![chunk(1, 0, 0, 2)], 100);
        let net = "198.51.100.0/24";
        let a = Taker {
            worker_id: "sybil-a",
            origin: net,
        };
        let b = Taker {
            worker_id: "sybil-b",
            origin: net,
        };
        assert_eq!(cache.take_for(a, 10).len(), 1);
        assert!(
            cache.take_for(b, 10).is_empty(),
            "a second identity on the same network must not get the other replica"
        );
        assert_eq!(cache.take_for(alone("honest"), 10).len(), 1);
    }

    #[test]
    fn replicas_of_one_chunk_go_to_distinct_workers() {
        let mut cache = DispatchCache::new();
        cache.load(vec![chunk(1, 0, 0, 2), chunk(1, 1, 0, 2)], 100);
        let a = cache.take_for(alone("a"), 10);
        assert_eq!(a.iter().map(|p| p.idx).collect::<Vec<_>>(), vec![0, 1]);
        assert!(
            cache.take_for(alone("a"), 10).is_empty(),
            "a must not get a second replica"
        );
        let b = cache.take_for(alone("b"), 10);
        assert_eq!(b.len(), 2);
        assert!(
            cache.take_for(alone("c"), 10).is_empty(),
            "both chunks are fully issued"
        );
    }

    #[test]
    fn merge_keeps_priority_order() {
        let mut cache = DispatchCache::new();
        cache.load(vec![chunk(1, 0, 0, 1)], 1);
        assert!(cache.is_truncated());
        cache.merge(vec![chunk(2, 0, 5, 1), chunk(1, 0, 0, 1)]);
        let order: Vec<_> = cache
            .take_for(alone("w"), 10)
            .iter()
            .map(|p| (p.job_id, p.idx))
            .collect();
        assert_eq!(order, vec![(2, 0), (1, 0)]);
    }
}
