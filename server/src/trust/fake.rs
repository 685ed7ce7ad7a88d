//! An in-memory [`ReviewDb`]: the trust rules' unit tests run [`super::review::reconcile`]
//! against it, without a database. It keeps what the SQL backends keep (chunks, replicas,
//! workers, job counters) and changes it the way their statements do (`store/sqlite.rs`'s
//! `impl ReviewDb` is the reference), so a test reads the outcome as a user would: which
//! chunks are done, which verdicts stand, who is blacklisted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use grid_protocol::states::{ChunkState, ReplicaState, Verdict};

use super::review::{
    Accepted, ChunkKey, ChunkRow, JobDelta, ReplicaRow, ReputationDelta, ReviewDb,
};
use super::verifier::QuorumPolicy;
use super::{PROVEN_LIE, VALID_RESULTS_PER_FORGIVEN_INVALID};
use crate::store::Result;

/// A chunk as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakeChunk {
    pub row: ChunkRow,
    /// The lease whose outcome was accepted.
    pub canonical: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
    /// The worker whose word alone accepted it.
    pub alone_by: Option<String>,
    /// Times backtracking reopened it.
    pub revised: i32,
    /// `agreed` or `disagreed` once the master computed it.
    pub master_checked: Option<bool>,
}

/// A worker's reputation, as in the `workers` table.
#[derive(Debug, Clone, Default)]
pub struct FakeWorker {
    pub valid: i32,
    pub invalid: i32,
    pub consecutive_valid: i64,
    pub blacklist_reason: Option<String>,
}

/// The whole store of the fake.
#[derive(Debug, Default)]
pub struct FakeDb {
    pub chunks: BTreeMap<ChunkKey, FakeChunk>,
    pub replicas: Vec<ReplicaRow>,
    pub workers: BTreeMap<String, FakeWorker>,
    pub jobs: BTreeMap<i64, JobDelta>,
    next_lease: i64,
}

impl FakeDb {
    /// An open chunk of a kernel job (`module: false`) with this policy.
    pub fn open_chunk(&mut self, key: ChunkKey, policy: QuorumPolicy) {
        self.chunks.insert(
            key,
            FakeChunk {
                row: ChunkRow {
                    state: ChunkState::Open,
                    wanted: i32::try_from(policy.redundancy).unwrap_or(i32::MAX),
                    policy,
                    output_digest: None,
                    module: false,
                },
                canonical: None,
                error: None,
                alone_by: None,
                revised: 0,
                master_checked: None,
            },
        );
    }

    /// A returned result of `worker` (from its own network) for `key`; returns its lease.
    pub fn returned(&mut self, key: ChunkKey, worker: &str, digest: [u8; 32]) -> i64 {
        self.replica(key, worker, ReplicaState::Returned, Some(digest), false)
    }

    /// A returned spot-check ringer of `worker` for the already accepted `key`.
    pub fn ringer(&mut self, key: ChunkKey, worker: &str, digest: [u8; 32]) -> i64 {
        self.replica(key, worker, ReplicaState::Returned, Some(digest), true)
    }

    /// A live lease of `worker` on `key`.
    pub fn leased(&mut self, key: ChunkKey, worker: &str) -> i64 {
        self.replica(key, worker, ReplicaState::Leased, None, false)
    }

    fn replica(
        &mut self,
        key: ChunkKey,
        worker: &str,
        state: ReplicaState,
        digest: Option<[u8; 32]>,
        ringer: bool,
    ) -> i64 {
        self.next_lease += 1;
        self.workers.entry(worker.to_owned()).or_default();
        if !ringer && let Some(chunk) = self.chunks.get_mut(&key) {
            // Leasing a replica takes it from the chunk's wanted ones, as `create_leases` does.
            chunk.row.wanted = (chunk.row.wanted - 1).max(0);
        }
        self.replicas.push(ReplicaRow {
            lease: self.next_lease,
            chunk: key,
            worker_id: worker.to_owned(),
            state,
            digest,
            is_error: false,
            ringer,
            verdict: None,
            origin: Some(format!("net-of-{worker}")),
            kind: Some("native".into()),
        });
        self.next_lease
    }

    /// The verdict of one lease.
    pub fn verdict(&self, lease: i64) -> Option<&'static str> {
        self.replicas
            .iter()
            .find(|r| r.lease == lease)
            .and_then(|r| r.verdict)
            .map(Verdict::as_str)
    }

    /// The state of one lease.
    pub fn lease_state(&self, lease: i64) -> &'static str {
        self.replicas
            .iter()
            .find(|r| r.lease == lease)
            .map_or("missing", |r| r.state.as_str())
    }

    /// A chunk's state.
    pub fn state(&self, key: ChunkKey) -> &'static str {
        self.chunks[&key].row.state.as_str()
    }

    /// Whether a worker is blacklisted.
    pub fn blacklisted(&self, worker: &str) -> bool {
        self.workers
            .get(worker)
            .is_some_and(|w| w.blacklist_reason.is_some())
    }

    fn chunk(&mut self, key: ChunkKey) -> &mut FakeChunk {
        self.chunks.get_mut(&key).expect("a chunk the test made")
    }
}

#[async_trait]
impl ReviewDb for FakeDb {
    async fn load_chunks(
        &mut self,
        keys: &BTreeSet<ChunkKey>,
    ) -> Result<BTreeMap<ChunkKey, ChunkRow>> {
        Ok(keys
            .iter()
            .filter_map(|key| Some((*key, self.chunks.get(key)?.row.clone())))
            .collect())
    }

    async fn load_replicas(&mut self, keys: &BTreeSet<ChunkKey>) -> Result<Vec<ReplicaRow>> {
        Ok(self
            .replicas
            .iter()
            .filter(|r| keys.contains(&r.chunk))
            .cloned()
            .collect())
    }

    async fn load_standings(
        &mut self,
        workers: &BTreeSet<String>,
    ) -> Result<HashMap<String, (i64, bool)>> {
        Ok(workers
            .iter()
            .filter_map(|id| {
                let w = self.workers.get(id)?;
                Some((
                    id.clone(),
                    (w.consecutive_valid, w.blacklist_reason.is_some()),
                ))
            })
            .collect())
    }

    async fn accept(&mut self, accepted: &[Accepted]) -> Result<()> {
        for a in accepted {
            let chunk = self.chunk(a.chunk);
            chunk.row.state = if a.is_error {
                ChunkState::Failed
            } else {
                ChunkState::Done
            };
            chunk.row.wanted = 0;
            chunk.row.output_digest = Some(a.digest);
            if a.quorum.is_some() {
                chunk.row.policy.quorum = a.quorum.and_then(|q| u32::try_from(q).ok());
            }
            chunk.canonical = Some(a.canonical);
            chunk.alone_by = a.alone_by.clone();
        }
        Ok(())
    }

    async fn fail(&mut self, failed: &[(ChunkKey, String)]) -> Result<()> {
        for (key, reason) in failed {
            let chunk = self.chunk(*key);
            chunk.row.state = ChunkState::Failed;
            chunk.row.wanted = 0;
            chunk.error = Some(reason.clone());
        }
        Ok(())
    }

    async fn set_wanted(&mut self, wanted: &[(ChunkKey, i32, Option<i32>)]) -> Result<()> {
        for (key, count, quorum) in wanted {
            let chunk = self.chunk(*key);
            chunk.row.wanted = *count;
            if let Some(q) = quorum {
                chunk.row.policy.quorum = u32::try_from(*q).ok();
            }
        }
        Ok(())
    }

    async fn set_verdicts(&mut self, verdicts: &[(i64, Verdict)]) -> Result<()> {
        for &(lease, verdict) in verdicts {
            if let Some(r) = self.replicas.iter_mut().find(|r| r.lease == lease) {
                r.verdict = Some(verdict);
            }
        }
        Ok(())
    }

    async fn revoke_live(&mut self, keys: &[ChunkKey]) -> Result<Vec<i64>> {
        let mut revoked = Vec::new();
        for r in self.replicas.iter_mut() {
            if keys.contains(&r.chunk) && r.state == ReplicaState::Leased && !r.ringer {
                r.state = ReplicaState::Revoked;
                revoked.push(r.lease);
            }
        }
        Ok(revoked)
    }

    async fn count_jobs(&mut self, per_job: &BTreeMap<i64, JobDelta>) -> Result<()> {
        for (job, delta) in per_job {
            let counts = self.jobs.entry(*job).or_default();
            counts.done += delta.done;
            counts.failed += delta.failed;
            counts.revised += delta.revised;
        }
        Ok(())
    }

    async fn update_reputation(
        &mut self,
        deltas: &BTreeMap<String, ReputationDelta>,
    ) -> Result<HashMap<String, i64>> {
        let mut totals = HashMap::new();
        for (id, delta) in deltas {
            let Some(w) = self.workers.get_mut(id) else {
                continue;
            };
            w.valid += delta.valid;
            w.invalid = (w.invalid + delta.invalid - delta.forgiven).max(0);
            w.consecutive_valid = if delta.invalid > 0 {
                0
            } else {
                w.consecutive_valid + i64::from(delta.vouched)
            };
            totals.insert(
                id.clone(),
                i64::from(w.invalid - w.valid / VALID_RESULTS_PER_FORGIVEN_INVALID),
            );
        }
        Ok(totals)
    }

    async fn blacklist(&mut self, workers: &BTreeMap<String, String>) -> Result<()> {
        for (id, reason) in workers {
            let w = self.workers.entry(id.clone()).or_default();
            if w.blacklist_reason.is_none() {
                w.blacklist_reason = Some(reason.clone());
            }
        }
        Ok(())
    }

    async fn backtrack(
        &mut self,
        worker: &str,
    ) -> Result<(Vec<(ChunkKey, bool)>, Vec<(i64, ChunkKey)>)> {
        let helped: BTreeSet<ChunkKey> = self
            .replicas
            .iter()
            .filter(|r| r.worker_id == worker && r.verdict == Some(Verdict::Valid) && !r.ringer)
            .map(|r| r.chunk)
            .collect();
        let mut reopened = Vec::new();
        for (key, chunk) in self.chunks.iter_mut() {
            let decided = chunk.row.state.is_decided();
            if decided && (helped.contains(key) || chunk.alone_by.as_deref() == Some(worker)) {
                reopened.push((*key, chunk.row.state == ChunkState::Failed));
                chunk.row.state = ChunkState::Open;
                chunk.row.wanted = 0;
                chunk.row.output_digest = None;
                chunk.row.policy.quorum = chunk
                    .row
                    .policy
                    .adaptive
                    .then_some(chunk.row.policy.redundancy);
                chunk.canonical = None;
                chunk.error = None;
                chunk.alone_by = None;
                chunk.revised += 1;
            }
        }
        let mut revoked = Vec::new();
        for r in self.replicas.iter_mut().filter(|r| r.worker_id == worker) {
            if r.state == ReplicaState::Returned && !r.ringer && r.verdict != Some(Verdict::Invalid)
            {
                r.verdict = Some(Verdict::Invalid);
            }
            if r.state == ReplicaState::Leased {
                r.state = ReplicaState::Revoked;
                revoked.push((r.lease, r.chunk));
            }
        }
        Ok((reopened, revoked))
    }

    async fn set_master_checked(&mut self, checks: &[(ChunkKey, bool)]) -> Result<()> {
        for (key, agreed) in checks {
            let chunk = self.chunk(*key);
            if chunk.row.state == ChunkState::Done {
                chunk.master_checked = Some(*agreed);
            }
        }
        Ok(())
    }

    async fn unblacklist(&mut self, workers: &[String]) -> Result<Vec<String>> {
        let mut lifted = Vec::new();
        for id in workers {
            if let Some(w) = self.workers.get_mut(id)
                && w.blacklist_reason
                    .as_deref()
                    .is_some_and(|reason| !reason.starts_with(PROVEN_LIE))
            {
                w.blacklist_reason = None;
                lifted.push(id.clone());
            }
        }
        Ok(lifted)
    }

    async fn withdraw_invalid(
        &mut self,
        chunks: &[ChunkKey],
        except: &str,
    ) -> Result<BTreeMap<String, i32>> {
        let mut withdrawn: BTreeMap<String, i32> = BTreeMap::new();
        for r in self.replicas.iter_mut() {
            if chunks.contains(&r.chunk)
                && r.verdict == Some(Verdict::Invalid)
                && !r.ringer
                && r.worker_id != except
            {
                r.verdict = None;
                *withdrawn.entry(r.worker_id.clone()).or_default() += 1;
            }
        }
        Ok(withdrawn)
    }
}
