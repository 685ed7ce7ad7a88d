//! The dispatch cache: ready chunks held in memory so that handing out work does not cost a
//! query per assignment (BOINC's "feeder"). The database stays the truth — a lease exists only
//! once its batch commits, and the commit re-checks that the chunk still wants it — so a stale
//! cache can waste a round but never over-issue.
//!
//! Chunks are dispatched across tenants (submitter tokens; the admin is one more) by weighted
//! fair share: each tenant has a queue of its own, in its own order (priority, then job, then
//! index: `priority` orders only one tenant's jobs), and each replica handed out goes to the
//! tenant with the smallest *pass*, which then grows by `1 / weight` (stride scheduling, i.e.
//! weighted fair queueing counted in replicas). Two backlogged tenants of weights 2 and 1 get
//! two replicas and one; a tenant's million-chunk job and another's ten-chunk job alternate, so
//! the small one is done after about twenty replicas whatever the big one holds.
//!
//! A tenant that gains work starts at the current virtual time (it does not bank a share while
//! idle), and one that could not be served for a while (no worker could take its chunks) catches
//! up by at most [`MAX_LAG_REPLICAS`] replicas. Each load from the database brings every tenant
//! with work its part of the load ([`crate::store::Store::ready_chunks`]); a tenant whose part
//! ran out while the database holds more makes the next round load again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use grid_protocol::Task;

use crate::store::ReadyChunk;

/// The pass a tenant of weight 1 advances per replica; weight `w` advances `PASS_SCALE / w`.
const PASS_SCALE: u64 = 1 << 20;
/// Replicas (at weight 1) a tenant that could not be served may catch up on at once.
pub const MAX_LAG_REPLICAS: u64 = 64;

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

/// A chunk's place in its tenant's queue: higher priority first, then older job, then index.
type OrderKey = (i32, i64, i32);

fn order_key(chunk: &ReadyChunk) -> OrderKey {
    // Higher priority first: negate it so the tuple sorts ascending.
    (chunk.priority.saturating_neg(), chunk.job_id, chunk.idx)
}

/// One tenant's cached chunks and its place in the fair share.
#[derive(Debug)]
struct TenantQueue {
    /// Its fair-share weight.
    weight: u32,
    /// Virtual time of its next replica; the smallest is served first.
    pass: u64,
    /// The database may hold ready chunks of this tenant beyond the cached ones.
    more_ready: bool,
    /// Chunks with replicas left to propose, in dispatch order.
    entries: BTreeMap<OrderKey, Entry>,
}

impl TenantQueue {
    fn stride(&self) -> u64 {
        PASS_SCALE / u64::from(self.weight.max(1))
    }
}

/// Ready chunks per tenant, handed out by weighted fair share across tenants.
#[derive(Debug, Default)]
pub struct DispatchCache {
    queues: BTreeMap<i64, TenantQueue>,
    /// Chunks whose replicas were all proposed since the last load: a merge must not bring
    /// them back (the database still counts them wanted until the round commits).
    spent: HashSet<(i64, i32)>,
    /// The fair share's virtual time: the pass of the replica proposed last.
    clock: u64,
    /// The contents may no longer match the database (new job, reopened chunk, failed claim).
    stale: bool,
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

    /// Whether a load from the database is due before proposing work: the contents are stale,
    /// or a tenant's cached chunks ran out while the database holds more of them (its share
    /// would otherwise go to the others until the next load).
    pub fn needs_load(&self) -> bool {
        self.stale
            || self
                .queues
                .values()
                .any(|queue| queue.more_ready && queue.entries.is_empty())
    }

    /// The current load's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the database may hold ready chunks beyond the cached ones.
    pub fn is_truncated(&self) -> bool {
        self.queues.values().any(|queue| queue.more_ready)
    }

    /// Replace the contents with a fresh load of at most `limit` rows. Tenants keep their
    /// place in the fair share; a load of `limit` rows marks every tenant as having more.
    pub fn load(&mut self, chunks: Vec<ReadyChunk>, limit: usize) {
        let hit_limit = chunks.len() >= limit;
        let passes: HashMap<i64, u64> = self
            .queues
            .iter()
            .map(|(tenant, queue)| (*tenant, queue.pass))
            .collect();
        self.queues.clear();
        self.spent.clear();
        for chunk in chunks {
            let share = chunk.share;
            let clock = self.clock;
            let queue = self
                .queues
                .entry(share.tenant)
                .or_insert_with(|| TenantQueue {
                    weight: share.weight,
                    // A tenant that gains work starts now, not where it left off.
                    pass: passes
                        .get(&share.tenant)
                        .map_or(clock, |&pass| pass.max(clock)),
                    more_ready: false,
                    entries: BTreeMap::new(),
                });
            queue.more_ready |= share.more_ready || hit_limit;
            queue.entries.insert(order_key(&chunk), Entry::from(chunk));
        }
        // Keep the numbers small: only differences of passes matter.
        for queue in self.queues.values_mut() {
            queue.pass = queue.pass.saturating_sub(self.clock);
        }
        self.clock = 0;
        self.stale = false;
        self.generation += 1;
    }

    /// Add chunks loaded for one worker, keeping each tenant's order and skipping known ones.
    pub fn merge(&mut self, chunks: Vec<ReadyChunk>) {
        for chunk in chunks {
            if self.spent.contains(&(chunk.job_id, chunk.idx)) {
                continue;
            }
            let share = chunk.share;
            let clock = self.clock;
            let queue = self
                .queues
                .entry(share.tenant)
                .or_insert_with(|| TenantQueue {
                    weight: share.weight,
                    pass: clock,
                    more_ready: share.more_ready,
                    entries: BTreeMap::new(),
                });
            queue
                .entries
                .entry(order_key(&chunk))
                .or_insert_with(|| Entry::from(chunk));
        }
    }

    /// Propose up to `count` chunks for `taker`, never one its identity or its origin ever
    /// had a replica of, and record both as holders. Each proposal goes to the tenant with the
    /// smallest pass among those with a chunk `taker` may take.
    pub fn take_for(&mut self, taker: Taker<'_>, count: usize) -> Vec<Proposal> {
        let mut proposals = Vec::new();
        if count == 0 {
            return proposals;
        }
        let floor = self
            .clock
            .saturating_sub(MAX_LAG_REPLICAS.saturating_mul(PASS_SCALE));
        let mut turns: BinaryHeap<Reverse<(u64, i64)>> = self
            .queues
            .iter_mut()
            .filter(|(_, queue)| !queue.entries.is_empty())
            .map(|(tenant, queue)| {
                queue.pass = queue.pass.max(floor);
                Reverse((queue.pass, *tenant))
            })
            .collect();
        // Per tenant, where this taker's search goes on: everything before was taken by it or
        // is not for it.
        let mut searched: HashMap<i64, OrderKey> = HashMap::new();
        while proposals.len() < count {
            let Some(Reverse((pass, tenant))) = turns.pop() else {
                break;
            };
            let Some(queue) = self.queues.get_mut(&tenant) else {
                continue;
            };
            let after = searched
                .get(&tenant)
                .map_or(Bound::Unbounded, |key| Bound::Excluded(*key));
            let found = queue
                .entries
                .range((after, Bound::Unbounded))
                .find(|(_, entry)| taker.may_take(&entry.chunk))
                .map(|(key, _)| *key);
            // Nothing here for this taker: the tenant sits out the rest of this call.
            let Some(key) = found else {
                continue;
            };
            searched.insert(tenant, key);
            if let Some(entry) = queue.entries.get_mut(&key) {
                entry.remaining -= 1;
                proposals.push(entry.propose_to(taker));
                if entry.remaining <= 0 {
                    self.spent.insert((entry.chunk.job_id, entry.chunk.idx));
                    queue.entries.remove(&key);
                }
            }
            self.clock = pass;
            queue.pass = pass.saturating_add(queue.stride());
            if !queue.entries.is_empty() {
                turns.push(Reverse((queue.pass, tenant)));
            }
        }
        // A tenant with nothing cached and nothing more in the database has no work left.
        self.queues
            .retain(|_, queue| queue.more_ready || !queue.entries.is_empty());
        proposals
    }
}

impl DispatchCache {
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.queues.values().all(|queue| queue.entries.is_empty())
    }

    /// One entry for `taker` (used for the ringer pool: entries are reusable, each worker and
    /// each origin gets a given ringer at most once), picked at random whatever its tenant.
    pub fn take_for_one(&mut self, taker: Taker<'_>) -> Option<Proposal> {
        let keys: Vec<(i64, OrderKey)> = self
            .queues
            .iter()
            .flat_map(|(tenant, queue)| queue.entries.keys().map(|key| (*tenant, *key)))
            .collect();
        let len = keys.len();
        if len == 0 {
            return None;
        }
        let start = rand::random_range(0..len);
        let (tenant, key) =
            (0..len)
                .map(|offset| keys[(start + offset) % len])
                .find(|(tenant, key)| {
                    self.queues[tenant]
                        .entries
                        .get(key)
                        .is_some_and(|entry| taker.may_take(&entry.chunk))
                })?;
        self.queues
            .get_mut(&tenant)?
            .entries
            .get_mut(&key)
            .map(|entry| entry.propose_to(taker))
    }
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
    use crate::store::Share;

    fn chunk(job_id: i64, idx: i32, priority: i32, wanted: i32) -> ReadyChunk {
        owned_chunk(0, 1, job_id, idx, priority, wanted)
    }

    /// A chunk of `tenant`, whose weight is `weight`, that the database has more of.
    fn owned_chunk(
        tenant: i64,
        weight: u32,
        job_id: i64,
        idx: i32,
        priority: i32,
        wanted: i32,
    ) -> ReadyChunk {
        ReadyChunk {
            job_id,
            idx,
            priority,
            task: Arc::new(Task::kernel("echo")),
            input: Arc::new(serde_json::Value::Null),
            lease_seconds: 60,
            wanted,
            holders: Vec::new(),
            share: Share {
                tenant,
                weight,
                more_ready: true,
            },
        }
    }

    /// A worker on a trusted network: its origin is its identity.
    fn alone(worker_id: &str) -> Taker<'_> {
        Taker {
            worker_id,
            origin: worker_id,
        }
    }

    /// Replicas handed out per job over `rounds` calls of `per_call` for fresh workers.
    fn shares(cache: &mut DispatchCache, rounds: usize, per_call: usize) -> BTreeMap<i64, usize> {
        let mut per_job = BTreeMap::new();
        for round in 0..rounds {
            let worker = format!("w{round}");
            for proposal in cache.take_for(alone(&worker), per_call) {
                *per_job.entry(proposal.job_id).or_default() += 1;
            }
        }
        per_job
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

    #[test]
    fn exhausted_chunks_are_dropped_and_not_merged_back() {
        let mut cache = DispatchCache::new();
        cache.load(vec![chunk(1, 0, 0, 1), chunk(1, 1, 0, 1)], 10);
        assert_eq!(cache.take_for(alone("a"), 1).len(), 1);
        // The database still counts chunk 0 wanted until the round commits.
        cache.merge(vec![chunk(1, 0, 0, 1), chunk(1, 2, 0, 1)]);
        let rest: Vec<_> = cache
            .take_for(alone("b"), 10)
            .iter()
            .map(|p| p.idx)
            .collect();
        assert_eq!(rest, vec![1, 2]);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_huge_job_does_not_starve_a_small_one() {
        let mut cache = DispatchCache::new();
        let mut chunks: Vec<_> = (0..2000).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect();
        chunks.extend((0..10).map(|i| owned_chunk(2, 1, 2, i, 0, 1)));
        cache.load(chunks, 4096);
        // One worker asking for many: its replicas alternate between the two tenants.
        let first: Vec<_> = cache.take_for(alone("w"), 20);
        assert_eq!(first.iter().filter(|p| p.job_id == 2).count(), 10);
        assert_eq!(first.iter().filter(|p| p.job_id == 1).count(), 10);
    }

    #[test]
    fn priority_orders_only_a_tenants_own_jobs() {
        let mut cache = DispatchCache::new();
        let mut chunks: Vec<_> = (0..100).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect();
        chunks.extend((0..100).map(|i| owned_chunk(1, 1, 2, i, 1000, 1)));
        chunks.extend((0..100).map(|i| owned_chunk(2, 1, 3, i, -1000, 1)));
        cache.load(chunks, 4096);
        let per_job = shares(&mut cache, 10, 10);
        // Tenant 1's priority puts its job 2 before its job 1, not before tenant 2.
        assert_eq!(per_job.get(&2), Some(&50));
        assert_eq!(per_job.get(&1), None);
        assert_eq!(per_job.get(&3), Some(&50));
    }

    #[test]
    fn weights_two_to_one_give_shares_two_to_one() {
        let mut cache = DispatchCache::new();
        let mut chunks: Vec<_> = (0..1000).map(|i| owned_chunk(1, 2, 1, i, 0, 1)).collect();
        chunks.extend((0..1000).map(|i| owned_chunk(2, 1, 2, i, 0, 1)));
        cache.load(chunks, 4096);
        let per_job = shares(&mut cache, 100, 9);
        assert_eq!(per_job[&1], 600);
        assert_eq!(per_job[&2], 300);
    }

    #[test]
    fn passes_survive_reloads() {
        let mut cache = DispatchCache::new();
        let load = |cache: &mut DispatchCache| {
            let mut chunks: Vec<_> = (0..10).map(|i| owned_chunk(1, 3, 1, i, 0, 1)).collect();
            chunks.extend((0..10).map(|i| owned_chunk(2, 1, 2, i, 0, 1)));
            cache.load(chunks, 4096);
        };
        // Reloaded after every replica: the shares still follow the weights.
        let mut per_job: BTreeMap<i64, usize> = BTreeMap::new();
        for round in 0..400 {
            load(&mut cache);
            let worker = format!("w{round}");
            for proposal in cache.take_for(alone(&worker), 1) {
                *per_job.entry(proposal.job_id).or_default() += 1;
            }
        }
        assert_eq!(per_job[&1], 300);
        assert_eq!(per_job[&2], 100);
    }

    #[test]
    fn a_newcomer_starts_now_and_banks_nothing() {
        let mut cache = DispatchCache::new();
        cache.load(
            (0..1000).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect(),
            4096,
        );
        assert_eq!(shares(&mut cache, 50, 10)[&1], 500);
        // Tenant 2 arrives after 500 replicas of tenant 1: from now on they alternate.
        let mut chunks: Vec<_> = (500..1000).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect();
        chunks.extend((0..100).map(|i| owned_chunk(2, 1, 2, i, 0, 1)));
        cache.load(chunks, 4096);
        let per_job = shares(&mut cache, 10, 10);
        assert_eq!(per_job[&1], 50);
        assert_eq!(per_job[&2], 50);
    }

    #[test]
    fn a_tenant_nobody_could_serve_catches_up_by_a_bounded_burst() {
        let mut cache = DispatchCache::new();
        // Tenant 2's chunks are all held by worker "x" already.
        let mut chunks: Vec<_> = (0..2000).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect();
        chunks.extend((0..500).map(|i| {
            let mut chunk = owned_chunk(2, 1, 2, i, 0, 1);
            chunk.holders.push("x".into());
            chunk
        }));
        cache.load(chunks, 4096);
        for _ in 0..100 {
            assert!(cache.take_for(alone("x"), 10).iter().all(|p| p.job_id == 1));
        }
        // 1000 replicas went to tenant 1 meanwhile; tenant 2 catches up on at most its lag.
        let next = cache.take_for(alone("y"), 200);
        let caught_up = next.iter().take_while(|p| p.job_id == 2).count() as u64;
        assert!(
            (MAX_LAG_REPLICAS..=MAX_LAG_REPLICAS + 1).contains(&caught_up),
            "{caught_up}"
        );
    }

    #[test]
    fn a_tenant_that_runs_out_while_the_database_has_more_asks_for_a_load() {
        let mut cache = DispatchCache::new();
        let mut chunks: Vec<_> = (0..2).map(|i| owned_chunk(1, 1, 1, i, 0, 1)).collect();
        chunks.extend((0..100).map(|i| owned_chunk(2, 1, 2, i, 0, 1)));
        cache.load(chunks, 4096);
        assert!(!cache.needs_load());
        cache.take_for(alone("w"), 4);
        assert!(cache.needs_load(), "tenant 1's part ran out");
    }
}
