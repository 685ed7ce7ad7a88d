//! [`ModuleCache`]: task modules by id, downloaded from the master once and compiled once.
//!
//! A module assignment names its module by content address (`sha256:<hex>`); the bytes are at
//! `GET /api/v1/modules/{id}` on the master that assigned it, on the host and port of its
//! WebSocket URL ([`module_url`]). A download is capped at [`MAX_MODULE_BYTES`], must hash to
//! the id it was fetched by, and must pass the ABI check before it is compiled (by
//! [`Sandbox::compile`]). The compiled modules live in a `quick_cache` cache, which also makes
//! concurrent requests for one module share one download; a failed one is not cached and is
//! retried by the next request.
//!
//! Compiling is bounded, since the master accepts modules of up to 8 MiB from anyone with a
//! token: one compilation at a time, on a thread of its own, single-threaded
//! (`parallel_compilation(false)`), so it takes one core at most; and at most
//! [`COMPILE_TIMEOUT`] of wall-clock time. A module that takes longer fails (its lease goes
//! back to the master) and is marked uncompilable for [`UNCOMPILABLE_FOR`]: its assignments
//! are handed back without downloading it again. Cranelift cannot be interrupted, so the
//! compile thread runs on until it is done, and keeps the next compilation waiting (at most
//! [`COMPILE_TIMEOUT`] too, after which that module's lease goes back, unmarked).
//!
//! Ids are content addresses, so one cache serves every master the worker talks to, across
//! reconnects. The HTTP client and the wasmtime engine are only made when the first module is
//! needed: a worker that only ever runs built-in kernels starts no epoch thread.
//!
//! Running modules is [`crate::sandbox`]'s job; what the session does with a module that cannot
//! be fetched (it hands the lease back) is `session`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grid_task_abi::{is_module_id, module_id};
use reqwest::StatusCode;
use tokio::sync::{OnceCell, Semaphore, oneshot};
use tracing::{debug, info, warn};
use url::Url;

use crate::error::ModuleError;
use crate::sandbox::{CompileError, Sandbox, TaskModule};

/// Largest module a worker downloads: well above the master's default upload limit (8 MiB),
/// so a master configured for larger modules still works, while a broken or hostile one
/// cannot fill the worker's memory.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// Compiled modules kept; beyond this the cache drops the ones least likely to be used again
/// (chunks running one keep it alive until they finish).
pub const MAX_CACHED_MODULES: usize = 16;

/// A download that receives nothing for this long is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a module may take to compile (wall clock, on one core).
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a module whose compilation timed out is not tried again.
pub const UNCOMPILABLE_FOR: Duration = Duration::from_secs(600);

/// The worker's task modules. Cheap to clone; clones share the cache.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    /// Shared by the sessions and their fetch tasks.
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The HTTP client and the engine, made on first use.
    tools: OnceCell<Tools>,
    /// How long connecting to the master may take.
    connect_timeout: Duration,
    /// The TLS settings of https:// downloads (`None`: reqwest's own, the Mozilla roots).
    tls: Option<rustls::ClientConfig>,
    /// Compiled modules by id.
    modules: quick_cache::sync::Cache<String, Arc<TaskModule>>,
    /// Longest a compilation may take.
    compile_timeout: Duration,
    /// One permit: the compilation running, held by its thread until it really ends.
    compiler: Arc<Semaphore>,
    /// Modules whose compilation timed out, until when they are not tried again.
    uncompilable: Mutex<HashMap<String, Instant>>,
}

/// What fetching and compiling needs.
#[derive(Debug)]
struct Tools {
    /// Keeps connections to the master between downloads.
    http: reqwest::Client,
    /// Compiles (and later runs) the modules.
    sandbox: Sandbox,
}

impl ModuleCache {
    /// An empty cache whose downloads give up connecting after `connect_timeout`, and whose
    /// compilations after [`COMPILE_TIMEOUT`].
    pub fn new(connect_timeout: Duration) -> ModuleCache {
        ModuleCache::with_compile_timeout(connect_timeout, COMPILE_TIMEOUT)
    }

    /// An empty cache whose compilations give up after `compile_timeout`.
    pub fn with_compile_timeout(
        connect_timeout: Duration,
        compile_timeout: Duration,
    ) -> ModuleCache {
        ModuleCache {
            inner: Arc::new(Inner {
                tools: OnceCell::new(),
                connect_timeout,
                tls: None,
                modules: quick_cache::sync::Cache::new(MAX_CACHED_MODULES),
                compile_timeout,
                compiler: Arc::new(Semaphore::new(1)),
                uncompilable: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same cache, downloading over https with `tls` (the worker's `--ca-cert`). Call it
    /// before the cache is shared.
    pub fn with_tls(mut self, tls: rustls::ClientConfig) -> ModuleCache {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.tls = Some(tls);
        }
        self
    }

    /// The module `id` if it is compiled already.
    pub fn cached(&self, id: &str) -> Option<Arc<TaskModule>> {
        self.inner.modules.get(id)
    }

    /// The module `id`: cached, or downloaded from the master at `master` (its WebSocket URL),
    /// checked and compiled.
    pub async fn get(&self, master: &Url, id: &str) -> Result<Arc<TaskModule>, ModuleError> {
        if !is_module_id(id) {
            return Err(ModuleError::BadId(id.to_owned()));
        }
        if self.recently_uncompilable(id) {
            return Err(ModuleError::Uncompilable);
        }
        self.inner
            .modules
            .get_or_insert_async(id, self.load(master, id))
            .await
    }

    /// Download, verify and compile `id`.
    async fn load(&self, master: &Url, id: &str) -> Result<Arc<TaskModule>, ModuleError> {
        let tools = self
            .inner
            .tools
            .get_or_try_init(|| async {
                Tools::new(self.inner.connect_timeout, self.inner.tls.clone())
            })
            .await?;
        let url = module_url(master, id)?;
        debug!(%url, "downloading a task module");
        let bytes = download(&tools.http, url).await?;
        let actual = module_id(&bytes);
        if actual != id {
            return Err(ModuleError::HashMismatch { actual });
        }

        let size = bytes.len();
        let started = Instant::now();
        let module = self.compile(&tools.sandbox, id, bytes).await?;
        info!(
            module = id,
            bytes = size,
            compile_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "task module compiled"
        );
        Ok(Arc::new(module))
    }

    /// Compile `bytes` on a thread of its own, one compilation at a time, within the compile
    /// timeout (see the module documentation).
    async fn compile(
        &self,
        sandbox: &Sandbox,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<TaskModule, ModuleError> {
        let timeout = self.inner.compile_timeout;
        let permit =
            tokio::time::timeout(timeout, Arc::clone(&self.inner.compiler).acquire_owned())
                .await
                .map_err(|_| ModuleError::CompilerBusy(timeout))?
                .map_err(|_| CompileError::Engine("the compiler is gone".into()))?;
        let (done, compiled) = oneshot::channel();
        let sandbox = sandbox.clone();
        std::thread::Builder::new()
            .name("grid-compile".into())
            .spawn(move || {
                // Held until Cranelift is really done, even after the timeout has passed.
                let _permit = permit;
                let _ = done.send(sandbox.compile(&bytes));
            })
            .map_err(|error| {
                CompileError::Engine(format!("cannot start the compiler thread: {error}"))
            })?;
        match tokio::time::timeout(timeout, compiled).await {
            Ok(Ok(compiled)) => Ok(compiled?),
            Ok(Err(_)) => Err(CompileError::Engine("the compiler thread failed".into()).into()),
            Err(_) => {
                warn!(
                    module = id,
                    timeout_s = timeout.as_secs_f64(),
                    "compiling a task module took too long; not trying it again for a while"
                );
                self.mark_uncompilable(id);
                Err(ModuleError::CompileTimeout(timeout))
            }
        }
    }

    /// Whether `id` timed out compiling less than [`UNCOMPILABLE_FOR`] ago.
    fn recently_uncompilable(&self, id: &str) -> bool {
        let marked = self
            .inner
            .uncompilable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        marked.get(id).is_some_and(|until| Instant::now() < *until)
    }

    fn mark_uncompilable(&self, id: &str) {
        let mut marked = self
            .inner
            .uncompilable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        // Entries expire; dropping the expired ones keeps the map as small as the modules
        // that timed out within the last `UNCOMPILABLE_FOR`.
        marked.retain(|_, until| now < *until);
        marked.insert(id.to_owned(), now + UNCOMPILABLE_FOR);
    }
}

impl Tools {
    fn new(
        connect_timeout: Duration,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Tools, ModuleError> {
        let mut http = reqwest::Client::builder()
            .user_agent(concat!("grid-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .read_timeout(READ_TIMEOUT);
        if let Some(tls) = tls {
            http = http.use_preconfigured_tls(tls);
        }
        let http = http.build()?;
        let sandbox = Sandbox::new().map_err(ModuleError::Sandbox)?;
        Ok(Tools { http, sandbox })
    }
}

/// Where the master at WebSocket URL `master` serves module `id` (`grid_task_abi::module_url`:
/// the same host and port, `http` for `ws` and `https` for `wss`).
pub fn module_url(master: &Url, id: &str) -> Result<Url, ModuleError> {
    // `WorkerConfig::validate` has made sure the master's URL is ws:// or wss://, and `get`
    // that `id` is a module id: neither error happens in practice.
    grid_task_abi::module_url(master.as_str(), id)
        .and_then(|url| Url::parse(&url).ok())
        .ok_or_else(|| ModuleError::BadId(id.to_owned()))
}

async fn download(http: &reqwest::Client, url: Url) -> Result<Vec<u8>, ModuleError> {
    let too_large = ModuleError::TooLarge {
        limit: MAX_MODULE_BYTES,
    };
    let mut response = http.get(url).send().await?;
    if response.status() != StatusCode::OK {
        return Err(ModuleError::Status(response.status()));
    }
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_MODULE_BYTES as u64 {
        return Err(too_large);
    }
    // The length is the master's word, but it is capped just above.
    let mut bytes = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await? {
        if bytes.len() + chunk.len() > MAX_MODULE_BYTES {
            return Err(too_large);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn modules_are_fetched_from_the_masters_http_side() {
        let id = format!("sha256:{}", "0a".repeat(32));
        let url = |ws: &str| {
            module_url(&Url::parse(ws).unwrap(), &id)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url("ws://127.0.0.1:8080/ws"),
            format!("http://127.0.0.1:8080/api/v1/modules/{id}")
        );
        assert_eq!(
            url("wss://grid.example.org/ws?x=1"),
            format!("https://grid.example.org/api/v1/modules/{id}")
        );
        assert_eq!(
            url("ws://[::1]:9000/ws"),
            format!("http://[::1]:9000/api/v1/modules/{id}")
        );
    }

    #[tokio::test]
    async fn ids_are_checked_before_anything_is_fetched() {
        let cache = ModuleCache::new(Duration::from_secs(1));
        let master = Url::parse("ws://127.0.0.1:9/ws").unwrap();
        let error = cache.get(&master, "../../etc/passwd").await.unwrap_err();
        assert!(matches!(error, ModuleError::BadId(_)), "{error}");
        assert!(cache.cached("../../etc/passwd").is_none());
    }
}
