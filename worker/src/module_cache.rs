//! [`ModuleCache`]: task modules by id, downloaded from the master once and compiled once.
//!
//! A module assignment names its module by content address (`sha256:<hex>`); the bytes are at
//! `GET /api/v1/modules/{id}` on the master that assigned it, on the host and port of its
//! WebSocket URL ([`module_url`]). A download is capped at [`MAX_MODULE_BYTES`], must hash to
//! the id it was fetched by, and must pass the ABI check before it is compiled (by
//! [`Sandbox::compile`], on the blocking pool). Concurrent requests for one module share one
//! download; a failed one is retried by the next request.
//!
//! Ids are content addresses, so one cache serves every master the worker talks to, across
//! reconnects. The HTTP client and the wasmtime engine are only made when the first module is
//! needed: a worker that only ever runs built-in kernels starts no epoch thread.
//!
//! Running modules is [`crate::sandbox`]'s job; what the session does with a module that cannot
//! be fetched (it hands the lease back) is `session`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use grid_task_abi::{is_module_id, module_id};
use reqwest::StatusCode;
use tokio::sync::OnceCell;
use tracing::{debug, info};
use url::Url;

use crate::error::ModuleError;
use crate::sandbox::{CompileError, Sandbox, TaskModule};

/// Largest module a worker downloads: well above the master's default upload limit (8 MiB),
/// so a master configured for larger modules still works, while a broken or hostile one
/// cannot fill the worker's memory.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// Compiled modules kept; the least recently used beyond this are dropped (chunks running
/// one keep it alive until they finish).
pub const MAX_CACHED_MODULES: usize = 16;

/// A download that receives nothing for this long is abandoned.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Modules by id, compiled or being fetched.
    entries: Mutex<Entries>,
}

/// What fetching and compiling needs.
#[derive(Debug)]
struct Tools {
    /// Keeps connections to the master between downloads.
    http: reqwest::Client,
    /// Compiles (and later runs) the modules.
    sandbox: Sandbox,
}

#[derive(Debug, Default)]
struct Entries {
    /// Each id's cell is filled once, by whichever request downloads it first.
    by_id: HashMap<String, Entry>,
    /// Counts uses, to find the least recently used entry.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    /// The compiled module, once there is one.
    module: Arc<OnceCell<Arc<TaskModule>>>,
    /// [`Entries::clock`] at the last use.
    last_used: u64,
}

impl ModuleCache {
    /// An empty cache whose downloads give up connecting after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> ModuleCache {
        ModuleCache {
            inner: Arc::new(Inner {
                tools: OnceCell::new(),
                connect_timeout,
                entries: Mutex::new(Entries::default()),
            }),
        }
    }

    /// The module `id` if it is compiled already.
    pub fn cached(&self, id: &str) -> Option<Arc<TaskModule>> {
        let mut entries = self.entries();
        let now = entries.tick();
        let entry = entries.by_id.get_mut(id)?;
        let module = entry.module.get()?;
        entry.last_used = now;
        Some(Arc::clone(module))
    }

    /// The module `id`: cached, or downloaded from the master at `master` (its WebSocket URL),
    /// checked and compiled.
    pub async fn get(&self, master: &Url, id: &str) -> Result<Arc<TaskModule>, ModuleError> {
        if !is_module_id(id) {
            return Err(ModuleError::BadId(id.to_owned()));
        }
        let cell = {
            let mut entries = self.entries();
            let now = entries.tick();
            let entry = entries.by_id.entry(id.to_owned()).or_insert_with(|| Entry {
                module: Arc::new(OnceCell::new()),
                last_used: now,
            });
            entry.last_used = now;
            Arc::clone(&entry.module)
        };
        match cell.get_or_try_init(|| self.load(master, id)).await {
            Ok(module) => {
                let module = Arc::clone(module);
                self.entries().evict();
                Ok(module)
            }
            Err(error) => {
                // Do not keep ids that fail around (a later request starts afresh); unless
                // another request has succeeded with this cell meanwhile.
                let mut entries = self.entries();
                if let Some(entry) = entries.by_id.get(id)
                    && Arc::ptr_eq(&entry.module, &cell)
                    && !cell.initialized()
                {
                    entries.by_id.remove(id);
                }
                Err(error)
            }
        }
    }

    /// Download, verify and compile `id`.
    async fn load(&self, master: &Url, id: &str) -> Result<Arc<TaskModule>, ModuleError> {
        let tools = self
            .inner
            .tools
            .get_or_try_init(|| async { Tools::new(self.inner.connect_timeout) })
            .await?;
        let url = module_url(master, id);
        debug!(%url, "downloading a task module");
        let bytes = download(&tools.http, url).await?;
        let actual = module_id(&bytes);
        if actual != id {
            return Err(ModuleError::HashMismatch { actual });
        }

        let size = bytes.len();
        let sandbox = tools.sandbox.clone();
        let started = Instant::now();
        let module = tokio::task::spawn_blocking(move || sandbox.compile(&bytes))
            .await
            .map_err(|error| {
                CompileError::Engine(format!("the compiler thread failed: {error}"))
            })??;
        info!(
            module = id,
            bytes = size,
            compile_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "task module compiled"
        );
        Ok(Arc::new(module))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // The map stays consistent whatever a panicking holder was doing: every update is one
        // insert or remove.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Entries {
    /// Advance the use clock.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Drop the least recently used compiled modules beyond [`MAX_CACHED_MODULES`]. Entries
    /// still downloading are left alone.
    fn evict(&mut self) {
        while self
            .by_id
            .values()
            .filter(|e| e.module.initialized())
            .count()
            > MAX_CACHED_MODULES
        {
            let Some(oldest) = self
                .by_id
                .iter()
                .filter(|(_, entry)| entry.module.initialized())
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(id, _)| id.clone())
            else {
                return;
            };
            debug!(module = %oldest, "dropping a compiled module from the cache");
            self.by_id.remove(&oldest);
        }
    }
}

impl Tools {
    fn new(connect_timeout: Duration) -> Result<Tools, ModuleError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("grid-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .read_timeout(READ_TIMEOUT)
            .build()?;
        let sandbox = Sandbox::new().map_err(ModuleError::Sandbox)?;
        Ok(Tools { http, sandbox })
    }
}

/// Where the master at WebSocket URL `master` serves module `id`: the same host and port,
/// `http` for `ws` and `https` for `wss`, path `/api/v1/modules/{id}`.
pub fn module_url(master: &Url, id: &str) -> Url {
    let mut url = master.clone();
    // ws → http and wss → https stay among the special schemes, which `Url` always allows;
    // `WorkerConfig::validate` has made sure the master's URL is ws:// or wss://.
    let _ = url.set_scheme(if master.scheme() == "wss" {
        "https"
    } else {
        "http"
    });
    url.set_path(&format!("/api/v1/modules/{id}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

/// GET `url`, refusing anything but 200 and bodies over [`MAX_MODULE_BYTES`].
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
        let url = |ws: &str| module_url(&Url::parse(ws).unwrap(), &id).to_string();
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
