//! The dispatch cache: ready chunks held in memory so that handing out work does not cost a
//! query per assignment (BOINC's "feeder"). The database stays the truth — a lease exists only
//! once its batch commits, and the commit re-checks that the chunk still wants it — so a stale
//! cache can waste a round but never over-issue.
//!
//! **Fair share between submitters** (review M6). Chunks are cached per tenant (the submitter
//! token owning the job; the admin's jobs are one more tenant), and each proposal goes to the
//! tenant with the lowest *pass*: stride scheduling, where a tenant's pass grows by
//! [`STRIDE`]` / weight` for every replica it is given. Over any stretch of time each tenant
//! with work gets a share of the replicas proportional to its weight, whatever the size or
//! the priority of its jobs: a tenant's million-chunk job cannot starve another's ten-chunk
//! job. `priority` orders only within one tenant's own jobs. A tenant that had no work
//! (re)joins at the current virtual time, so idling earns no burst later.
//!
//! [`load_fair_share`] fills the cache the same way: a budget of chunks per tenant, read job
//! by job as index range reads, never one ordered scan in which the biggest job comes first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use grid_protocol::Task;

use crate::error::Result;
use crate::store::{ReadyChunk, ReadyJob, Store, Tenant};

/// A tenant's pass grows by this divided by its weight per replica it is given.
pub const STRIDE: u64 = 1 << 20;
/// Unfinished jobs of one tenant read per load (its highest priority, oldest first).
const JOBS_PER_TENANT: usize = 8;
/// Tenants read per load, those furthest behind their share first.
const TENANTS_PER_LOAD: usize = 64;
/// Chunks each loaded tenant gets at least, however many tenants share the load.
const MIN_CHUNKS_PER_TENANT: usize = 32;

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

/// One tenant's cached chunks, in dispatch order (priority, then job, then index).
#[derive(Debug, Default)]
struct TenantQueue {
    weight: u64,
    entries: VecDeque<Entry>,
}

/// Ready chunks per tenant, and each tenant's place in the fair share.
#[derive(Debug, Default)]
pub struct DispatchCache {
    queues: BTreeMap<Tenant, TenantQueue>,
    /// Each tenant's pass (kept across loads, so reloading costs nobody their turn).
    passes: HashMap<Tenant, u64>,
    /// The pass of the tenant served last: where a tenant (re)joining starts.
    virtual_time: u64,
    /// The contents may no longer match the database (new job, reopened chunk, failed claim).
    stale: bool,
    /// The last load hit a limit: the database may hold more ready chunks than are cached.
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

    /// Whether a load from the database is due before proposing work: the contents are stale,
    /// or the last load was partial and some tenant has run dry in the cache (the others
    /// would otherwise get its share until everything ran dry).
    pub fn needs_load(&self) -> bool {
        self.stale
            || (self.truncated
                && (self.queues.is_empty() || self.queues.values().any(|q| q.entries.is_empty())))
    }

    /// The current load's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the database may hold ready chunks beyond the cached ones.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// A tenant's pass: how much it has been given, over its weight.
    pub fn pass_of(&self, tenant: Tenant) -> u64 {
        self.passes
            .get(&tenant)
            .copied()
            .unwrap_or(self.virtual_time)
            .max(self.virtual_time)
    }

    /// Replace the contents with a fresh load; `truncated`: the database may hold more.
    pub fn load(&mut self, chunks: Vec<ReadyChunk>, truncated: bool) {
        self.queues.clear();
        self.truncated = truncated;
        self.stale = false;
        self.generation += 1;
        self.merge(chunks);
    }

    /// Add chunks, keeping each tenant's dispatch order and skipping known ones.
    pub fn merge(&mut self, chunks: Vec<ReadyChunk>) {
        for chunk in chunks {
            let tenant = chunk.tenant;
            if !self.queues.contains_key(&tenant) {
                // (Re)joining: at the virtual time at the earliest, so idling earns no burst.
                let pass = self.pass_of(tenant);
                self.passes.insert(tenant, pass);
            }
            let queue = self.queues.entry(tenant).or_default();
            queue.weight = chunk.weight.clamp(1, 1000) as u64;
            let key = order_key(&chunk);
            let position = queue
                .entries
                .iter()
                .position(|entry| order_key(&entry.chunk) >= key);
            match position {
                Some(i) if order_key(&queue.entries[i].chunk) == key => {}
                Some(i) => queue.entries.insert(i, Entry::from(chunk)),
                None => queue.entries.push_back(Entry::from(chunk)),
            }
        }
        // Forget the passes of tenants long gone, once there are many (they rejoin at the
        // virtual time anyway).
        if self.passes.len() > 4 * TENANTS_PER_LOAD.max(self.queues.len()) {
            let queues = &self.queues;
            self.passes.retain(|tenant, _| queues.contains_key(tenant));
        }
    }

    /// Propose up to `count` chunks for `taker`, never one its identity or its origin ever
    /// had a replica of, and record both as holders. Each proposal comes from the tenant
    /// furthest behind its share among those with a chunk `taker` may take.
    pub fn take_for(&mut self, taker: Taker<'_>, count: usize) -> Vec<Proposal> {
        let mut proposals = Vec::new();
        if count == 0 {
            return proposals;
        }
        // Where each tenant's scan for a chunk `taker` may take goes on from (entries are
        // only decremented during the call, so positions stay valid).
        let mut cursors: HashMap<Tenant, usize> = HashMap::new();
        while proposals.len() < count {
            let mut best: Option<(u64, Tenant, usize)> = None;
            for (tenant, queue) in &self.queues {
                let cursor = cursors.entry(*tenant).or_insert(0);
                while *cursor < queue.entries.len() {
                    let entry = &queue.entries[*cursor];
                    if entry.remaining > 0 && taker.may_take(&entry.chunk) {
                        break;
                    }
                    *cursor += 1;
                }
                if *cursor == queue.entries.len() {
                    continue;
                }
                let pass = self
                    .passes
                    .get(tenant)
                    .copied()
                    .unwrap_or(self.virtual_time);
                if best.is_none_or(|(best_pass, ..)| pass < best_pass) {
                    best = Some((pass, *tenant, *cursor));
                }
            }
            let Some((pass, tenant, index)) = best else {
                break;
            };
            let queue = self
                .queues
                .get_mut(&tenant)
                .expect("chosen from the queues");
            let entry = &mut queue.entries[index];
            entry.remaining -= 1;
            proposals.push(entry.propose_to(taker));
            self.virtual_time = self.virtual_time.max(pass);
            self.passes.insert(tenant, pass + STRIDE / queue.weight);
        }
        for queue in self.queues.values_mut() {
            while queue.entries.front().is_some_and(|e| e.remaining <= 0) {
                queue.entries.pop_front();
            }
        }
        proposals
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.queues.values().all(|q| q.entries.is_empty())
    }

    /// One entry for `taker` (used for the ringer pool: entries are reusable, each worker and
    /// each origin gets a given ringer at most once), from a random place.
    pub fn take_for_one(&mut self, taker: Taker<'_>) -> Option<Proposal> {
        let len: usize = self.queues.values().map(|q| q.entries.len()).sum();
        let start = rand::random_range(0..len.max(1));
        let mut entries: Vec<&mut Entry> = self
            .queues
            .values_mut()
            .flat_map(|q| q.entries.iter_mut())
            .collect();
        let found = (0..len)
            .map(|offset| (start + offset) % len)
            .find(|&i| taker.may_take(&entries[i].chunk))?;
        Some(entries[found].propose_to(taker))
    }
}

/// Read ready chunks from the database for [`DispatchCache::load`]: the tenants furthest
/// behind their share first (at most [`TENANTS_PER_LOAD`]), each with an equal budget of the
/// `limit`, read from its jobs in priority order. Returns the chunks and whether the database
/// may hold more.
pub async fn load_fair_share(
    store: &dyn Store,
    cache: &DispatchCache,
    limit: usize,
) -> Result<(Vec<ReadyChunk>, bool)> {
    let jobs = store.ready_jobs(JOBS_PER_TENANT as i64).await?;
    let mut tenants: Vec<&[ReadyJob]> = jobs.chunk_by(|a, b| a.tenant == b.tenant).collect();
    let mut truncated = tenants.len() > TENANTS_PER_LOAD;
    tenants.sort_by_key(|jobs| cache.pass_of(jobs[0].tenant));
    tenants.truncate(TENANTS_PER_LOAD);
    let budget = (limit / tenants.len().max(1)).max(MIN_CHUNKS_PER_TENANT);
    let mut chunks = Vec::new();
    for jobs in tenants {
        // As many jobs as asked for: the tenant may have more.
        truncated |= jobs.len() >= JOBS_PER_TENANT;
        let mut left = budget;
        for job in jobs {
            if left == 0 {
                truncated = true;
                break;
            }
            let read = store.ready_chunks_of_job(job, left as i64).await?;
            // A full read: the job may have more.
            truncated |= read.len() >= left;
            left -= read.len().min(left);
            chunks.extend(read);
        }
    }
    Ok((chunks, truncated))
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
        owned(None, 1, job_id, idx, priority, wanted)
    }

    /// A chunk of `tenant`'s job, the tenant having `weight`.
    fn owned(
        tenant: Tenant,
        weight: i32,
        job_id: i64,
        idx: i32,
        priority: i32,
        wanted: i32,
    ) -> ReadyChunk {
        ReadyChunk {
            tenant,
            weight,
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
        cache.load(vec![chunk(1, 0, 0, 2)], false);
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
        cache.load(vec![chunk(1, 0, 0, 2), chunk(1, 1, 0, 2)], false);
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
        cache.load(vec![chunk(1, 0, 0, 1)], true);
        assert!(cache.is_truncated());
        cache.merge(vec![chunk(2, 0, 5, 1), chunk(1, 0, 0, 1)]);
        let order: Vec<_> = cache
            .take_for(alone("w"), 10)
            .iter()
            .map(|p| (p.job_id, p.idx))
            .collect();
        assert_eq!(order, vec![(2, 0), (1, 0)]);
    }

    /// Jobs per tenant of `(tenant, weight, job, chunks, priority)`.
    fn jobs(spec: &[(Tenant, i32, i64, i32, i32)]) -> Vec<ReadyChunk> {
        spec.iter()
            .flat_map(|&(tenant, weight, job, chunks, priority)| {
                (0..chunks).map(move |idx| owned(tenant, weight, job, idx, priority, 1))
            })
            .collect()
    }

    /// How many of `n` proposals (one worker each) go to each job.
    fn shares(cache: &mut DispatchCache, n: usize) -> BTreeMap<i64, usize> {
        let mut shares = BTreeMap::new();
        for i in 0..n {
            for proposal in cache.take_for(alone(&format!("w{i}")), 1) {
                *shares.entry(proposal.job_id).or_default() += 1;
            }
        }
        shares
    }

    #[test]
    fn a_big_job_does_not_starve_another_tenants_small_one() {
        let mut cache = DispatchCache::new();
        // Tenant 1's big job comes first in every order the database knows (older, higher
        // priority); tenant 2's ten chunks still get every other replica.
        cache.load(
            jobs(&[(Some(1), 1, 1, 1000, 50), (Some(2), 1, 2, 10, 0)]),
            true,
        );
        let order: Vec<i64> = cache
            .take_for(alone("w"), 20)
            .iter()
            .map(|p| p.job_id)
            .collect();
        assert_eq!(
            order.iter().filter(|&&job| job == 2).count(),
            10,
            "{order:?}"
        );
        assert!(
            order[..4].contains(&2),
            "the small job waits for no more than a turn: {order:?}"
        );
    }

    #[test]
    fn shares_follow_the_weights() {
        let mut cache = DispatchCache::new();
        cache.load(
            jobs(&[
                (Some(1), 3, 1, 1000, 0),
                (Some(2), 1, 2, 1000, 0),
                (None, 1, 3, 1000, 0),
            ]),
            false,
        );
        let shares = shares(&mut cache, 500);
        assert_eq!(shares[&1], 300, "{shares:?}");
        assert_eq!(shares[&2], 100, "{shares:?}");
        assert_eq!(shares[&3], 100, "{shares:?}");
    }

    #[test]
    fn priority_orders_only_within_a_tenant() {
        let mut cache = DispatchCache::new();
        cache.load(
            jobs(&[
                (Some(1), 1, 1, 50, 0),
                (Some(1), 1, 2, 50, 900),
                (Some(2), 1, 3, 100, -900),
            ]),
            false,
        );
        let shares = shares(&mut cache, 100);
        // Tenant 1's high-priority job takes its whole half; its other job none yet.
        assert_eq!(shares.get(&2), Some(&50), "{shares:?}");
        assert_eq!(shares.get(&1), None, "{shares:?}");
        assert_eq!(shares.get(&3), Some(&50), "{shares:?}");
    }

    #[test]
    fn a_tenant_that_was_idle_gets_no_burst() {
        let mut cache = DispatchCache::new();
        cache.load(jobs(&[(Some(1), 1, 1, 1000, 0)]), false);
        assert_eq!(shares(&mut cache, 300)[&1], 300);
        // Tenant 2 arrives (a reload): it joins at the current virtual time and shares from
        // there, instead of being owed the 300 replicas it did not ask for.
        let mut reload = jobs(&[(Some(1), 1, 1, 1000, 0)]);
        reload.drain(..300);
        reload.extend(jobs(&[(Some(2), 1, 2, 1000, 0)]));
        cache.load(reload, false);
        let shares = shares(&mut cache, 100);
        assert_eq!(shares[&1], 50, "{shares:?}");
        assert_eq!(shares[&2], 50, "{shares:?}");
    }

    #[test]
    fn a_tenant_whose_chunks_a_worker_cannot_take_does_not_block_the_others() {
        let mut cache = DispatchCache::new();
        let mut held = jobs(&[(Some(1), 1, 1, 5, 0)]);
        for chunk in &mut held {
            chunk.holders.push("w".into());
        }
        held.extend(jobs(&[(Some(2), 1, 2, 5, 0)]));
        cache.load(held, false);
        let taken = cache.take_for(alone("w"), 10);
        assert_eq!(taken.len(), 5);
        assert!(taken.iter().all(|p| p.job_id == 2));
        assert_eq!(
            cache.take_for(alone("v"), 10).len(),
            5,
            "tenant 1's chunks are still there"
        );
    }

    #[test]
    fn a_partial_load_reloads_when_a_tenant_runs_dry() {
        let mut cache = DispatchCache::new();
        cache.load(jobs(&[(Some(1), 1, 1, 2, 0), (Some(2), 1, 2, 50, 0)]), true);
        assert!(!cache.needs_load());
        cache.take_for(alone("w"), 4);
        assert!(
            cache.needs_load(),
            "tenant 1 ran dry while the database may hold more of its chunks"
        );
    }
}
