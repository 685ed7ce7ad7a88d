//! Verification and trust inside a commit, written once for every backend (unit-tested
//! against an in-memory port, `trust/fake.rs`).
//!
//! [`reconcile`] takes the chunks a batch touched and, through the small [`ReviewDb`] trait
//! each backend implements over its open transaction:
//! 1. loads the chunks (locked), their replicas and the standing of the workers behind them;
//! 2. judges spot-check ringers against the accepted digest of their chunk;
//! 3. runs the verifier ([`crate::trust::verifier::decide`]) over every open chunk and applies the
//!    decisions (accept, fail, want more), persisting an adaptive chunk's quorum;
//! 4. sets verdicts on the returned replicas of accepted chunks and updates reputations;
//! 5. blacklists workers caught lying — [`BLACKLIST_AFTER_INVALID`] invalid results, failed
//!    ringers included — and backtracks: every chunk their word helped accept is reopened and
//!    goes round this loop again, so it is verified anew by others.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use grid_protocol::states::{ChunkState, ReplicaState, Verdict};

use super::{BLACKLIST_AFTER_INVALID, PROVEN_LIE};
use crate::store::BatchOutcome;
use crate::store::Result;
use crate::trust::verifier::{self, Decision, QuorumPolicy, ReplicaFact, ReplicaStatus, Standing};

/// Chunk key: `(job_id, idx)`.
pub type ChunkKey = (i64, i32);

/// The master's own computation of an accepted chunk (see [`crate::trust::master_checks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterCheck {
    /// The chunk.
    pub chunk: ChunkKey,
    /// Digest of the outcome the master computed.
    pub digest: [u8; 32],
    /// Whether it equals the accepted outcome.
    pub agreed: bool,
}

/// A chunk row as the reviewer needs it.
#[derive(Debug, Clone)]
pub struct ChunkRow {
    /// Only open chunks are decided.
    pub state: ChunkState,
    /// Replicas currently wanted.
    pub wanted: i32,
    /// The job's quorum policy with the chunk's fixed quorum.
    pub policy: QuorumPolicy,
    /// Digest of the accepted outcome (done chunks).
    pub output_digest: Option<[u8; 32]>,
    /// A chunk of an uploaded module (its outcome may legally depend on the engine).
    pub module: bool,
}

/// A replica row as the reviewer needs it.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// Lease id.
    pub lease: i64,
    /// Its chunk.
    pub chunk: ChunkKey,
    /// The worker.
    pub worker_id: String,
    /// Leased, returned, or ended without a result.
    pub state: ReplicaState,
    /// Outcome digest, when returned.
    pub digest: Option<[u8; 32]>,
    /// Whether the outcome is an error.
    pub is_error: bool,
    /// A spot-check of an already accepted chunk.
    pub ringer: bool,
    /// None yet, or what the grid concluded of its result.
    pub verdict: Option<Verdict>,
    /// The worker's network, or its identity on a trusted network (none on old rows).
    pub origin: Option<String>,
    /// The worker's kind (`native` or `browser`), as last seen.
    pub kind: Option<String>,
}

impl ReplicaRow {
    /// Its origin, falling back to the identity for rows from before origins were kept.
    fn origin(&self) -> &str {
        self.origin.as_deref().unwrap_or(&self.worker_id)
    }
}

/// A chunk accepted with a quorum (or alone, adaptive).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Chunk.
    pub chunk: ChunkKey,
    /// The replica whose outcome is stored.
    pub canonical: i64,
    /// How many agreed.
    pub agreeing: i32,
    /// The agreed outcome is an error: the chunk fails with it.
    pub is_error: bool,
    /// Digest of the accepted outcome.
    pub digest: [u8; 32],
    /// The quorum to persist (adaptive), if fixed now.
    pub quorum: Option<i32>,
    /// The worker whose word alone accepted it.
    pub alone_by: Option<String>,
}

/// A change of reputation for one worker from one round of verdicts.
#[derive(Debug, Clone, Default)]
pub struct ReputationDelta {
    /// New valid results.
    pub valid: i32,
    /// Of those, results whose answer the grid knew independently of this worker (a
    /// master-checked spot-check, or agreement with an already trusted identity on another
    /// network): only these build trust (`consecutive_valid`).
    pub vouched: i32,
    /// New invalid results.
    pub invalid: i32,
    /// Invalid verdicts withdrawn: the result disagreed with an accepted outcome the master
    /// later proved wrong, and agreed with the master.
    pub forgiven: i32,
}

/// The backend operations [`reconcile`] needs, over one open transaction.
#[async_trait]
pub trait ReviewDb: Send {
    /// Chunks with their job's policy, locked against concurrent reviewers (in key order).
    async fn load_chunks(
        &mut self,
        keys: &BTreeSet<ChunkKey>,
    ) -> Result<BTreeMap<ChunkKey, ChunkRow>>;
    /// Every replica of these chunks.
    async fn load_replicas(&mut self, keys: &BTreeSet<ChunkKey>) -> Result<Vec<ReplicaRow>>;
    /// `(consecutive_valid, blacklisted)` of these workers.
    async fn load_standings(
        &mut self,
        workers: &BTreeSet<String>,
    ) -> Result<HashMap<String, (i64, bool)>>;
    /// Mark chunks accepted (done, or failed with an agreed error).
    async fn accept(&mut self, accepted: &[Accepted]) -> Result<()>;
    /// Mark chunks failed without quorum.
    async fn fail(&mut self, failed: &[(ChunkKey, String)]) -> Result<()>;
    /// Set chunks' wanted replicas, and their quorum when fixed now.
    async fn set_wanted(&mut self, wanted: &[(ChunkKey, i32, Option<i32>)]) -> Result<()>;
    /// Set replica verdicts.
    async fn set_verdicts(&mut self, verdicts: &[(i64, Verdict)]) -> Result<()>;
    /// Revoke the live leases of these chunks, returning them.
    async fn revoke_live(&mut self, keys: &[ChunkKey]) -> Result<Vec<i64>>;
    /// Add to jobs' done/failed counters (negative when backtracking reopens chunks, counted in
    /// `revised`) and move jobs between running and finished accordingly.
    async fn count_jobs(&mut self, per_job: &BTreeMap<i64, JobDelta>) -> Result<()>;
    /// Apply reputation deltas; returns each worker's invalid results afterwards, less one per
    /// [`super::VALID_RESULTS_PER_FORGIVEN_INVALID`] valid ones.
    async fn update_reputation(
        &mut self,
        deltas: &BTreeMap<String, ReputationDelta>,
    ) -> Result<HashMap<String, i64>>;
    /// Blacklist workers (those not already blacklisted).
    async fn blacklist(&mut self, workers: &BTreeMap<String, String>) -> Result<()>;
    /// Reopen every decided chunk the worker's word helped accept: returns the chunks (with
    /// whether each had failed; the caller adjusts job counters) and the worker's live leases,
    /// now revoked, with their chunks.
    async fn backtrack(
        &mut self,
        worker: &str,
    ) -> Result<(Vec<(ChunkKey, bool)>, Vec<(i64, ChunkKey)>)>;
    /// Record the master's own checks of accepted chunks (`true`: its output agreed).
    async fn set_master_checked(&mut self, checks: &[(ChunkKey, bool)]) -> Result<()>;
    /// Lift the blacklist of these workers, unless it was for a proven lie (an output the
    /// master refuted): they were blacklisted for invalid results that were withdrawn. Returns
    /// those whose blacklist was lifted.
    async fn unblacklist(&mut self, workers: &[String]) -> Result<Vec<String>>;
    /// Withdraw the invalid verdicts of the given chunks' non-ringer replicas from workers
    /// other than `except` (their chunk's decision was undone): returns how many per worker.
    async fn withdraw_invalid(
        &mut self,
        chunks: &[ChunkKey],
        except: &str,
    ) -> Result<BTreeMap<String, i32>>;
}

/// Changes to one job's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobDelta {
    /// Chunks newly done (negative: reopened).
    pub done: i32,
    /// Chunks newly failed (negative: reopened).
    pub failed: i32,
    /// Chunks reopened by backtracking.
    pub revised: i32,
}

/// Review every touched chunk (and every chunk backtracking reopens) and apply the outcome.
/// `master_checks` are accepted chunks the master computed itself: where its output differs,
/// every worker that returned the accepted output lied (kernels are deterministic) and is
/// blacklisted, which reopens the chunk and everything else their word helped accept.
pub async fn reconcile<D: ReviewDb>(
    db: &mut D,
    touched: &BTreeSet<ChunkKey>,
    master_checks: &[MasterCheck],
    outcome: &mut BatchOutcome,
    trust_off: bool,
) -> Result<()> {
    let mut pending: BTreeSet<ChunkKey> = touched.clone();
    if !master_checks.is_empty() {
        let verdicts: Vec<(ChunkKey, bool)> =
            master_checks.iter().map(|c| (c.chunk, c.agreed)).collect();
        db.set_master_checked(&verdicts).await?;
        let refuted: BTreeMap<ChunkKey, [u8; 32]> = master_checks
            .iter()
            .filter(|check| !check.agreed)
            .map(|check| (check.chunk, check.digest))
            .collect();
        if !refuted.is_empty() && !trust_off {
            pending.extend(refute(db, &refuted, outcome).await?);
        }
    }
    // Backtracking can cascade (a reopened chunk's other voter may be caught too), but each
    // worker is blacklisted once, so this ends; the bound is a guard.
    for _ in 0..16 {
        if pending.is_empty() {
            break;
        }
        pending = review_round(db, &pending, outcome, trust_off).await?;
    }
    Ok(())
}

/// Blacklist the workers behind accepted outputs the master found wrong, and withdraw the
/// invalid verdicts of those who disagreed with them and agreed with the master (lifting their
/// blacklist when that was its cause: colluders must not get honest volunteers blacklisted by
/// outvoting them); returns the chunks backtracking reopened.
async fn refute<D: ReviewDb>(
    db: &mut D,
    refuted: &BTreeMap<ChunkKey, [u8; 32]>,
    outcome: &mut BatchOutcome,
) -> Result<BTreeSet<ChunkKey>> {
    let keys: BTreeSet<ChunkKey> = refuted.keys().copied().collect();
    let chunks = db.load_chunks(&keys).await?;
    let replicas = db.load_replicas(&keys).await?;
    let mut caught: BTreeMap<String, String> = BTreeMap::new();
    let mut withdrawn: Vec<(i64, Verdict)> = Vec::new();
    let mut forgiven: BTreeMap<String, ReputationDelta> = BTreeMap::new();
    for row in replicas
        .iter()
        .filter(|r| !r.ringer && r.state == ReplicaState::Returned)
    {
        let accepted = chunks.get(&row.chunk).and_then(|c| c.output_digest);
        if accepted.is_some() && row.digest == accepted {
            caught.entry(row.worker_id.clone()).or_insert_with(|| {
                format!(
                    "{PROVEN_LIE} of job {} chunk {} that the master computed differently",
                    row.chunk.0, row.chunk.1
                )
            });
        } else if row.digest == refuted.get(&row.chunk).copied()
            && row.verdict == Some(Verdict::Invalid)
        {
            withdrawn.push((row.lease, Verdict::Valid));
            let delta = forgiven.entry(row.worker_id.clone()).or_default();
            delta.valid += 1;
            delta.forgiven += 1;
        }
    }
    let workers: BTreeSet<String> = caught.keys().chain(forgiven.keys()).cloned().collect();
    let standings = db.load_standings(&workers).await?;
    caught.retain(|worker, _| !standings.get(worker).is_some_and(|s| s.1));
    metrics::counter!("grid_master_checks_refuted_total").increment(refuted.len() as u64);
    if !withdrawn.is_empty() {
        db.set_verdicts(&withdrawn).await?;
        let totals = db.update_reputation(&forgiven).await?;
        let cleared: Vec<String> = totals
            .into_iter()
            .filter(|(worker, total)| {
                *total < BLACKLIST_AFTER_INVALID
                    && standings.get(worker).is_some_and(|s| s.1)
                    && !caught.contains_key(worker)
            })
            .map(|(worker, _)| worker)
            .collect();
        if !cleared.is_empty() {
            outcome
                .unblacklisted
                .extend(db.unblacklist(&cleared).await?);
        }
    }
    let mut per_job = BTreeMap::new();
    let reopened = punish(db, &caught, outcome, &mut per_job).await?;
    if !per_job.is_empty() {
        db.count_jobs(&per_job).await?;
    }
    Ok(reopened)
}

/// Blacklist `caught` and backtrack each: returns the chunks reopened (job counters in
/// `per_job`).
async fn punish<D: ReviewDb>(
    db: &mut D,
    caught: &BTreeMap<String, String>,
    outcome: &mut BatchOutcome,
    per_job: &mut BTreeMap<i64, JobDelta>,
) -> Result<BTreeSet<ChunkKey>> {
    let mut reopened = BTreeSet::new();
    if caught.is_empty() {
        return Ok(reopened);
    }
    db.blacklist(caught).await?;
    for (worker, reason) in caught {
        tracing::warn!(worker = %crate::auth::fingerprint(worker), %reason, "worker blacklisted; backtracking");
        let (chunks_reopened, leases) = db.backtrack(worker).await?;
        for (lease, chunk) in leases {
            // The chunk lost a live lease: it wants a replacement (reviewed next round).
            outcome.revoked.push(lease);
            reopened.insert(chunk);
        }
        let mut decisions_undone = Vec::with_capacity(chunks_reopened.len());
        for (key, was_failed) in chunks_reopened {
            let delta = per_job.entry(key.0).or_default();
            if was_failed {
                delta.failed -= 1;
            } else {
                delta.done -= 1;
            }
            delta.revised += 1;
            outcome.backtracked += 1;
            reopened.insert(key);
            decisions_undone.push(key);
        }
        outcome.blacklisted.push(worker.clone());
        // A reopened chunk's decision is undone, and with it the blame it laid on the workers
        // that disagreed with the liar's side: their invalid verdicts are withdrawn (the chunk
        // judges them anew once re-verified). Otherwise colluders who outvote an honest
        // volunteer twice before they are caught get it blacklisted for good.
        if !decisions_undone.is_empty() {
            let withdrawn = db.withdraw_invalid(&decisions_undone, worker).await?;
            if !withdrawn.is_empty() {
                let deltas: BTreeMap<String, ReputationDelta> = withdrawn
                    .into_iter()
                    .map(|(w, n)| {
                        (
                            w,
                            ReputationDelta {
                                forgiven: n,
                                ..ReputationDelta::default()
                            },
                        )
                    })
                    .collect();
                let totals = db.update_reputation(&deltas).await?;
                let cleared: Vec<String> = totals
                    .into_iter()
                    .filter(|(w, total)| {
                        *total < BLACKLIST_AFTER_INVALID && !caught.contains_key(w)
                    })
                    .map(|(w, _)| w)
                    .collect();
                if !cleared.is_empty() {
                    outcome
                        .unblacklisted
                        .extend(db.unblacklist(&cleared).await?);
                }
            }
        }
    }
    outcome.reopened = true;
    Ok(reopened)
}

/// The standing of the workers behind a round's replicas, as loaded at its start.
struct Standings(HashMap<String, (i64, bool)>);

impl Standings {
    async fn load<D: ReviewDb>(db: &mut D, replicas: &[ReplicaRow]) -> Result<Self> {
        let workers: BTreeSet<String> = replicas.iter().map(|r| r.worker_id.clone()).collect();
        Ok(Self(db.load_standings(&workers).await?))
    }

    fn of(&self, worker: &str) -> Standing {
        self.0.get(worker).map_or(Standing::Untrusted, |&(c, b)| {
            Standing::from_reputation(c, b)
        })
    }

    fn blacklisted(&self, worker: &str) -> bool {
        self.0.get(worker).is_some_and(|s| s.1)
    }
}

/// What one round concluded, before any of it is written.
#[derive(Debug, Default)]
struct Findings {
    /// Verdicts on returned replicas.
    verdicts: Vec<(i64, Verdict)>,
    /// Reputation changes per worker.
    reputation: BTreeMap<String, ReputationDelta>,
    /// Chunks accepted (done, or failed with an agreed error).
    accepted: Vec<Accepted>,
    /// Chunks failed without a quorum, with why.
    failed: Vec<(ChunkKey, String)>,
    /// Chunks whose wanted replicas (or quorum) change.
    wanted: Vec<(ChunkKey, i32, Option<i32>)>,
    /// Job counter changes.
    per_job: BTreeMap<i64, JobDelta>,
}

/// One pass over `keys`: judge, decide, write, punish. Returns the chunks backtracking reopened.
async fn review_round<D: ReviewDb>(
    db: &mut D,
    keys: &BTreeSet<ChunkKey>,
    outcome: &mut BatchOutcome,
    trust_off: bool,
) -> Result<BTreeSet<ChunkKey>> {
    let chunks = db.load_chunks(keys).await?;
    let replicas = db.load_replicas(keys).await?;
    let standings = Standings::load(db, &replicas).await?;

    let mut findings = Findings::default();
    judge_ringers(&chunks, &replicas, &mut findings, outcome);
    decide_open_chunks(&chunks, &replicas, &standings, &mut findings, outcome);
    let mut caught = write_findings(db, &findings, &standings, outcome).await?;
    let mut per_job = findings.per_job;
    caught.retain(|worker, _| !trust_off && !standings.blacklisted(worker));

    let reopened = punish(db, &caught, outcome, &mut per_job).await?;
    if !per_job.is_empty() {
        db.count_jobs(&per_job).await?;
    }
    Ok(reopened)
}

/// Spot-check ringers, judged against the accepted digest of their chunk; they never count
/// towards a quorum.
fn judge_ringers(
    chunks: &BTreeMap<ChunkKey, ChunkRow>,
    replicas: &[ReplicaRow],
    findings: &mut Findings,
    outcome: &mut BatchOutcome,
) {
    for ringer in replicas.iter().filter(|r| r.ringer) {
        let (Some(digest), None, ReplicaState::Returned) =
            (ringer.digest, ringer.verdict, ringer.state)
        else {
            continue;
        };
        let Some(expected) = chunks.get(&ringer.chunk).and_then(|c| c.output_digest) else {
            continue;
        };
        let valid = digest == expected;
        findings.verdicts.push((ringer.lease, Verdict::of(valid)));
        let delta = findings
            .reputation
            .entry(ringer.worker_id.clone())
            .or_default();
        if valid {
            // Ringers are chunks the master computed itself: the answer is known
            // independently of every worker, so passing one builds trust.
            delta.valid += 1;
            delta.vouched += 1;
        } else {
            delta.invalid += 1;
        }
        outcome.ringers_judged += 1;
    }
}

/// The verifier over every open chunk: accept, fail, or want more replicas.
fn decide_open_chunks(
    chunks: &BTreeMap<ChunkKey, ChunkRow>,
    replicas: &[ReplicaRow],
    standings: &Standings,
    findings: &mut Findings,
    outcome: &mut BatchOutcome,
) {
    let mut by_chunk: BTreeMap<ChunkKey, Vec<&ReplicaRow>> = BTreeMap::new();
    for replica in replicas.iter().filter(|r| !r.ringer) {
        by_chunk.entry(replica.chunk).or_default().push(replica);
    }
    let standing_of = |worker: &str| standings.of(worker);
    for (&key, chunk) in chunks {
        if chunk.state != ChunkState::Open {
            continue;
        }
        let rows = by_chunk.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        let facts: Vec<ReplicaFact> = rows
            .iter()
            .map(|row| ReplicaFact {
                lease: row.lease,
                status: status(row),
                standing: standings.of(&row.worker_id),
            })
            .collect();
        let (decision, quorum) = verifier::decide(chunk.policy, &facts, rand::random::<f64>());
        let quorum = quorum.map(|q| i32::try_from(q).unwrap_or(i32::MAX));
        match decision {
            Decision::Accept { digest, alone, .. }
                if chunk.module
                    && !alone
                    && engine_split(rows, digest, &standing_of).is_some_and(|n| n >= 2) =>
            {
                // A module whose outcome depends on the engine (call-stack depth, NaN bits):
                // nobody lied, so nobody gets an invalid verdict and nothing is backtracked.
                findings.per_job.entry(key.0).or_default().failed += 1;
                outcome.failed += 1;
                metrics::counter!("grid_chunks_engine_dependent_total").increment(1);
                findings.failed.push((key, ENGINE_DEPENDENT.to_owned()));
            }
            Decision::Accept {
                canonical,
                digest,
                agreeing,
                is_error,
                alone,
            } => {
                let alone_by = alone
                    .then(|| rows.iter().find(|r| r.lease == canonical))
                    .flatten()
                    .map(|r| r.worker_id.clone());
                if !alone {
                    // A module's lone dissenter of the other engine is not blamed.
                    let excused =
                        chunk.module && engine_split(rows, digest, &standing_of).is_some();
                    judge_quorum(rows, digest, excused, standings, findings);
                }
                let delta = findings.per_job.entry(key.0).or_default();
                if is_error {
                    delta.failed += 1;
                    outcome.failed += 1;
                } else {
                    delta.done += 1;
                    outcome.accepted += 1;
                }
                if alone {
                    outcome.accepted_alone += 1;
                }
                findings.accepted.push(Accepted {
                    chunk: key,
                    canonical,
                    agreeing: i32::try_from(agreeing).unwrap_or(i32::MAX),
                    is_error,
                    digest,
                    quorum,
                    alone_by,
                });
            }
            Decision::Fail(reason) => {
                findings.per_job.entry(key.0).or_default().failed += 1;
                outcome.failed += 1;
                findings.failed.push((key, reason));
            }
            Decision::Want(n) => {
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                if n != chunk.wanted || quorum.is_some() {
                    outcome.reopened |= n > chunk.wanted;
                    findings.wanted.push((key, n, quorum));
                }
            }
        }
    }
}

/// Verdicts on every counted result of a chunk accepted by a quorum with outcome `digest`:
/// agreeing ones valid, the others invalid (unless `excused`: a module's lone dissenter of the
/// other engine). Results of blacklisted workers were not counted: they are invalid, and earn
/// no reputation.
fn judge_quorum(
    rows: &[&ReplicaRow],
    digest: [u8; 32],
    excused: bool,
    standings: &Standings,
    findings: &mut Findings,
) {
    // Agreement builds trust only when an identity that is trusted already, on another
    // network, is among the agreeing: identities without an independent record agreeing with
    // each other prove nothing (they may be one party).
    let trusted_origins: BTreeSet<&str> = rows
        .iter()
        .filter(|row| {
            row.state == ReplicaState::Returned
                && row.digest == Some(digest)
                && standings.of(&row.worker_id).is_trusted()
        })
        .map(|row| row.origin())
        .collect();
    for row in rows {
        if row.state != ReplicaState::Returned || row.verdict.is_some() {
            continue;
        }
        if standings.of(&row.worker_id) == Standing::Blacklisted {
            findings.verdicts.push((row.lease, Verdict::Invalid));
            continue;
        }
        if let Some(d) = row.digest {
            let valid = d == digest;
            findings.verdicts.push((row.lease, Verdict::of(valid)));
            let delta = findings
                .reputation
                .entry(row.worker_id.clone())
                .or_default();
            if valid {
                delta.valid += 1;
                if trusted_origins.iter().any(|&o| o != row.origin()) {
                    delta.vouched += 1;
                }
            } else if !excused {
                delta.invalid += 1;
            }
        }
    }
}

/// Write a round's findings: decisions, revocations of leases on decided chunks, verdicts and
/// reputations. Returns the workers whose invalid results now reach
/// [`BLACKLIST_AFTER_INVALID`], with why.
async fn write_findings<D: ReviewDb>(
    db: &mut D,
    findings: &Findings,
    standings: &Standings,
    outcome: &mut BatchOutcome,
) -> Result<BTreeMap<String, String>> {
    let Findings {
        verdicts,
        reputation,
        accepted,
        failed,
        wanted,
        ..
    } = findings;
    if !accepted.is_empty() {
        db.accept(accepted).await?;
    }
    if !failed.is_empty() {
        db.fail(failed).await?;
    }
    if !wanted.is_empty() {
        db.set_wanted(wanted).await?;
    }
    let decided: Vec<ChunkKey> = accepted
        .iter()
        .map(|a| a.chunk)
        .chain(failed.iter().map(|f| f.0))
        .collect();
    if !decided.is_empty() {
        // Leases still out on a decided chunk are pointless: revoke them so workers stop.
        outcome.revoked.extend(db.revoke_live(&decided).await?);
    }
    if !verdicts.is_empty() {
        for (_, verdict) in verdicts {
            if *verdict == Verdict::Valid {
                outcome.valid_replicas += 1;
            } else {
                outcome.invalid_replicas += 1;
            }
        }
        db.set_verdicts(verdicts).await?;
    }
    let mut caught = BTreeMap::new();
    if !reputation.is_empty() {
        let invalid_totals = db.update_reputation(reputation).await?;
        for (worker, total) in invalid_totals {
            if total >= BLACKLIST_AFTER_INVALID && !standings.blacklisted(&worker) {
                caught
                    .entry(worker)
                    .or_insert_with(|| format!("{total} results disagreed with the accepted ones"));
            }
        }
    }
    Ok(caught)
}

/// Why a module chunk whose results split by engine fails.
pub const ENGINE_DEPENDENT: &str = "engine-dependent: browser and native workers computed different \
     outcomes, so the module's result depends on the WebAssembly engine (for example on its \
     call-stack depth); no worker is blamed";

/// When the returned results that disagree with `accepted` all come from one kind of worker
/// and the agreeing ones all from the other: from how many origins the dissent comes. Two or
/// more fail the chunk as engine-dependent; a lone dissenter is outvoted but not blamed (it
/// may be its engine), so one liar can neither fail module chunks nor get an honest engine's
/// volunteers blacklisted.
fn engine_split(
    rows: &[&ReplicaRow],
    accepted: [u8; 32],
    standing_of: &impl Fn(&str) -> Standing,
) -> Option<usize> {
    let mut agreeing = BTreeSet::new();
    let mut dissenting = BTreeSet::new();
    let mut dissenting_origins = BTreeSet::new();
    for row in rows {
        let (Some(digest), ReplicaState::Returned) = (row.digest, row.state) else {
            continue;
        };
        if standing_of(&row.worker_id) == Standing::Blacklisted {
            continue;
        }
        let kind = row.kind.as_deref().unwrap_or("unknown");
        if digest == accepted {
            agreeing.insert(kind);
        } else {
            dissenting.insert(kind);
            dissenting_origins.insert(row.origin());
        }
    }
    (agreeing.len() == 1 && dissenting.len() == 1 && agreeing != dissenting)
        .then_some(dissenting_origins.len())
}

fn status(row: &ReplicaRow) -> ReplicaStatus {
    match (row.state, row.digest) {
        (ReplicaState::Leased, _) => ReplicaStatus::Live,
        (ReplicaState::Returned, Some(digest)) => ReplicaStatus::Returned {
            digest,
            is_error: row.is_error,
        },
        _ => ReplicaStatus::Ended,
    }
}

/// A digest column's bytes as a digest.
pub fn digest_of(bytes: Option<Vec<u8>>) -> Option<[u8; 32]> {
    bytes.and_then(|b| b.try_into().ok())
}

#[cfg(test)]
mod tests {
    //! The review against the in-memory port ([`crate::trust::fake::FakeDb`]): each test plays
    //! the batches a scheduler would commit and reads the outcome as a user would.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::trust::fake::FakeDb;
    use crate::trust::verifier::QuorumPolicy;

    const RIGHT: [u8; 32] = [1; 32];
    const WRONG: [u8; 32] = [2; 32];
    const OTHER: [u8; 32] = [3; 32];

    fn fixed(redundancy: u32) -> QuorumPolicy {
        QuorumPolicy {
            redundancy,
            max_replicas: redundancy + 2,
            adaptive: false,
            quorum: None,
        }
    }

    /// One commit's review of `touched`, as the store runs it.
    async fn review(db: &mut FakeDb, touched: &[ChunkKey]) -> BatchOutcome {
        review_with(db, touched, &[], false).await
    }

    async fn review_with(
        db: &mut FakeDb,
        touched: &[ChunkKey],
        checks: &[MasterCheck],
        trust_off: bool,
    ) -> BatchOutcome {
        let mut outcome = BatchOutcome::default();
        let touched: BTreeSet<ChunkKey> = touched.iter().copied().collect();
        reconcile(db, &touched, checks, &mut outcome, trust_off)
            .await
            .unwrap();
        outcome
    }

    /// A chunk accepted with `digest` by two fresh honest-looking workers.
    async fn accepted_by(db: &mut FakeDb, key: ChunkKey, workers: [&str; 2], digest: [u8; 32]) {
        db.open_chunk(key, fixed(2));
        for worker in workers {
            db.returned(key, worker, digest);
        }
        review(db, &[key]).await;
        assert_eq!(db.state(key), "done");
    }

    #[tokio::test]
    async fn two_agreeing_results_accept_a_chunk_and_earn_valid_verdicts() {
        let mut db = FakeDb::default();
        let key = (1, 0);
        db.open_chunk(key, fixed(2));
        let a = db.returned(key, "a", RIGHT);
        let outcome = review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "open", "one result is no quorum");
        assert_eq!(outcome.accepted, 0);

        let live = db.leased(key, "c");
        let b = db.returned(key, "b", RIGHT);
        let outcome = review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "done");
        assert_eq!(db.chunks[&key].row.output_digest, Some(RIGHT));
        assert_eq!(outcome.accepted, 1);
        assert_eq!(
            (db.verdict(a), db.verdict(b)),
            (Some("valid"), Some("valid"))
        );
        assert_eq!(
            db.lease_state(live),
            "revoked",
            "a lease on a decided chunk is revoked"
        );
        assert_eq!(outcome.revoked, vec![live]);
        assert_eq!(db.jobs[&1].done, 1);
        // Two untrusted identities agreeing prove nothing: valid, but no trust earned.
        assert_eq!(db.workers["a"].valid, 1);
        assert_eq!(db.workers["a"].consecutive_valid, 0);
    }

    #[tokio::test]
    async fn a_dissenter_gets_one_more_replica_issued_and_is_outvoted() {
        let mut db = FakeDb::default();
        let key = (1, 0);
        db.open_chunk(key, fixed(2));
        let honest = db.returned(key, "honest", RIGHT);
        let liar = db.returned(key, "liar", WRONG);
        let outcome = review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "open");
        assert_eq!(
            db.chunks[&key].row.wanted, 1,
            "a disagreement issues one more replica"
        );
        assert!(outcome.reopened);

        let third = db.returned(key, "third", RIGHT);
        review(&mut db, &[key]).await;
        assert_eq!(db.chunks[&key].row.output_digest, Some(RIGHT));
        assert_eq!(db.verdict(liar), Some("invalid"));
        assert_eq!(db.verdict(honest), Some("valid"));
        assert_eq!(db.verdict(third), Some("valid"));
        assert_eq!(db.workers["liar"].invalid, 1);
        assert!(!db.blacklisted("liar"), "one invalid result is forgiven");
    }

    #[tokio::test]
    async fn a_second_lie_blacklists_the_liar_and_reopens_what_its_word_accepted() {
        let mut db = FakeDb::default();
        // The liar's word helped accept chunk (1, 0) (it agreed with someone that time).
        accepted_by(&mut db, (1, 0), ["liar", "friend"], RIGHT).await;
        let elsewhere = db.leased((2, 5), "liar");
        db.open_chunk((2, 5), fixed(2));
        // Two lies, each outvoted.
        for idx in 1..=2 {
            let key = (1, idx);
            db.open_chunk(key, fixed(2));
            db.returned(key, "a", RIGHT);
            db.returned(key, "b", RIGHT);
            db.returned(key, "liar", WRONG);
        }
        let outcome = review(&mut db, &[(1, 1), (1, 2)]).await;
        assert!(db.blacklisted("liar"));
        assert_eq!(outcome.blacklisted, vec!["liar".to_owned()]);
        assert_eq!(
            db.state((1, 0)),
            "open",
            "backtracked: verified anew by others"
        );
        assert_eq!(db.chunks[&(1, 0)].revised, 1);
        assert_eq!(outcome.backtracked, 1);
        assert_eq!(db.lease_state(elsewhere), "revoked");
        assert!(outcome.revoked.contains(&elsewhere));
        assert_eq!(
            (db.jobs[&1].done, db.jobs[&1].revised),
            (3 - 1, 1),
            "three accepted, one undone"
        );
        // The reopened chunk went round again: the liar's result no longer counts, the
        // friend's alone is no quorum.
        assert_eq!(db.chunks[&(1, 0)].row.wanted, 1);
        assert_eq!((db.state((1, 1)), db.state((1, 2))), ("done", "done"));
    }

    #[tokio::test]
    async fn colluders_who_outvote_an_honest_volunteer_are_undone_by_the_master() {
        let mut db = FakeDb::default();
        let key = (7, 3);
        db.open_chunk(key, fixed(2));
        db.returned(key, "x", WRONG);
        db.returned(key, "y", WRONG);
        let honest = db.returned(key, "honest", RIGHT);
        review(&mut db, &[key]).await;
        assert_eq!(db.chunks[&key].row.output_digest, Some(WRONG), "outvoted");
        assert_eq!(db.verdict(honest), Some("invalid"));

        let check = MasterCheck {
            chunk: key,
            digest: RIGHT,
            agreed: false,
        };
        let outcome = review_with(&mut db, &[], &[check], false).await;
        assert!(db.blacklisted("x") && db.blacklisted("y"));
        assert!(
            db.workers["x"]
                .blacklist_reason
                .as_deref()
                .unwrap()
                .starts_with(crate::trust::PROVEN_LIE)
        );
        assert!(!db.blacklisted("honest"));
        assert_eq!(
            db.verdict(honest),
            Some("valid"),
            "its invalid verdict is withdrawn"
        );
        assert_eq!(db.workers["honest"].invalid, 0);
        assert_eq!(
            db.state(key),
            "open",
            "the forged answer is no longer accepted"
        );
        assert_eq!(db.chunks[&key].row.output_digest, None);
        assert_eq!((db.jobs[&7].done, db.jobs[&7].revised), (0, 1));
        assert_eq!(outcome.backtracked, 1);
        // The colluders' results count for nothing now: the honest one alone wants a second.
        assert_eq!(db.chunks[&key].row.wanted, 1);
    }

    #[tokio::test]
    async fn ringers_build_trust_when_passed_and_count_as_lies_when_failed() {
        let mut db = FakeDb::default();
        let key = (1, 0);
        accepted_by(&mut db, key, ["a", "b"], RIGHT).await;
        let passed = db.ringer(key, "newcomer", RIGHT);
        let outcome = review(&mut db, &[key]).await;
        assert_eq!(db.verdict(passed), Some("valid"));
        assert_eq!(outcome.ringers_judged, 1);
        assert_eq!(
            db.workers["newcomer"].consecutive_valid, 1,
            "a known answer vouches"
        );
        assert_eq!(
            db.state(key),
            "done",
            "a ringer never reopens or re-decides its chunk"
        );

        db.ringer(key, "cheat", WRONG);
        review(&mut db, &[key]).await;
        assert!(!db.blacklisted("cheat"));
        db.ringer(key, "cheat", OTHER);
        review(&mut db, &[key]).await;
        assert!(db.blacklisted("cheat"), "two failed ringers");
        assert_eq!(db.state(key), "done", "the cheat's word accepted nothing");
    }

    #[tokio::test]
    async fn a_module_chunk_split_by_engine_fails_without_blame() {
        let mut db = FakeDb::default();
        let key = (4, 0);
        db.open_chunk(key, fixed(2));
        db.chunks.get_mut(&key).unwrap().row.module = true;
        let leases = [
            db.returned(key, "native-1", RIGHT),
            db.returned(key, "native-2", RIGHT),
            db.returned(key, "browser-1", OTHER),
            db.returned(key, "browser-2", OTHER),
        ];
        for replica in db.replicas.iter_mut() {
            if replica.worker_id.starts_with("browser") {
                replica.kind = Some("browser".into());
            }
        }
        review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "failed");
        assert_eq!(db.chunks[&key].error.as_deref(), Some(ENGINE_DEPENDENT));
        for lease in leases {
            assert_eq!(db.verdict(lease), None, "nobody lied");
        }
        assert!(db.workers.values().all(|w| w.invalid == 0));
    }

    #[tokio::test]
    async fn plain_voting_never_blacklists() {
        let mut db = FakeDb::default();
        for idx in 0..3 {
            let key = (1, idx);
            db.open_chunk(key, fixed(2));
            db.returned(key, "a", RIGHT);
            db.returned(key, "b", RIGHT);
            db.returned(key, "liar", WRONG);
            review_with(&mut db, &[key], &[], true).await;
        }
        assert_eq!(db.workers["liar"].invalid, 3);
        assert!(!db.blacklisted("liar"), "--no-trust: verdicts only");
    }

    #[tokio::test]
    async fn results_of_a_blacklisted_worker_are_invalid_and_do_not_count() {
        let mut db = FakeDb::default();
        db.workers
            .entry("banned".into())
            .or_default()
            .blacklist_reason = Some("test".into());
        let key = (1, 0);
        db.open_chunk(key, fixed(2));
        let banned = db.returned(key, "banned", RIGHT);
        db.returned(key, "a", RIGHT);
        review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "open", "the banned result is no second vote");
        db.returned(key, "b", RIGHT);
        review(&mut db, &[key]).await;
        assert_eq!(db.state(key), "done");
        assert_eq!(db.verdict(banned), Some("invalid"));
        assert_eq!(db.workers["banned"].valid, 0);
    }
}
