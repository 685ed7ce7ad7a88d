//! [`ModuleRunner`]: one task-module chunk from its task to its end, asynchronously, in the
//! browser.
//!
//! The JavaScript half is a [`ModuleHost`] (`frontend/src/modules.js`), passed in by
//! `frontend/src/worker.js`: it fetches bytes and runs a compiled module in a sandbox Web
//! Worker (`frontend/src/sandbox.js`) under the wall-clock limit, terminating and replacing
//! the sandbox when the limit passes or it dies. Everything that decides something is in Rust:
//! the checks and the memory cap ([`crate::task_module::prepare`]), the compiled-module cache,
//! and the outcome ([`SandboxAnswer::end`]), so the outcome equals the native worker's.
//!
//! Compiled modules are cached by (id, memory cap) for the life of the Web Worker (the capped
//! bytes differ per cap); modules that fail at start are cached as such.

use std::cell::RefCell;
use std::collections::VecDeque;

use grid_task_abi::outcome::input_text;
use grid_task_abi::{Abi, Failure, ModuleInfo, wasi};
use js_sys::{Reflect, Uint8Array, WebAssembly};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

use crate::task_module::{ChunkEnd, ModuleTask, Prepared, SandboxAnswer, Unrunnable, prepare};

#[wasm_bindgen]
extern "C" {
    /// The JavaScript side of task modules: `ModuleHost` in `frontend/src/modules.js`.
    #[derive(Debug, Clone)]
    pub type ModuleHost;

    /// `fetchModule(url) -> Promise<Uint8Array>`: the bytes at `url`; rejects with the reason
    /// when they cannot be fetched.
    #[wasm_bindgen(method, js_name = fetchModule)]
    fn fetch_module(this: &ModuleHost, url: &str) -> js_sys::Promise;

    /// `run(module, input, timeoutMs, wasi) -> Promise<answer>`: one chunk in the sandbox;
    /// never rejects. `wasi` is `null` for a raw module, `{seed: Uint8Array}` (the chunk's
    /// random-stream key) for a WASI command module. The answers are objects with a `kind`
    /// (see [`answer`]).
    #[wasm_bindgen(method)]
    fn run(
        this: &ModuleHost,
        module: &WebAssembly::Module,
        input: &Uint8Array,
        timeout_ms: u32,
        wasi: &JsValue,
    ) -> js_sys::Promise;

    /// `cancel()`: stop the running chunk, if any (its `run` answers `cancelled`).
    #[wasm_bindgen(method)]
    fn cancel(this: &ModuleHost);
}

/// The `kind`s of the sandbox's answers and their fields (`frontend/src/sandbox.js` and
/// `frontend/src/modules.js` write them).
mod answer {
    /// `{kind, output: Uint8Array}`
    pub const OUTPUT: &str = "output";
    /// `{kind, message, memoryBytes: number | null, stderr?: Uint8Array}`
    pub const TRAP: &str = "trap";
    /// `{kind, code, stdout: Uint8Array, stderr: Uint8Array}` (WASI)
    pub const EXIT: &str = "exit";
    /// `{kind, stderr: Uint8Array}` (WASI)
    pub const STDOUT_TOO_LARGE: &str = "stdout-too-large";
    /// `{kind, ptr, len, memoryBytes}`
    pub const ALLOC_OUT_OF_BOUNDS: &str = "alloc-out-of-bounds";
    /// `{kind, ptr, len, memoryBytes}`
    pub const OUTPUT_OUT_OF_BOUNDS: &str = "output-out-of-bounds";
    /// `{kind}`
    pub const TIMEOUT: &str = "timeout";
    /// `{kind, reason}`
    pub const CRASHED: &str = "crashed";
    /// `{kind}`
    pub const CANCELLED: &str = "cancelled";
}

/// Compiled modules kept per Web Worker; beyond this the oldest is dropped.
const CACHE_ENTRIES: usize = 16;

/// A module as the cache keeps it.
#[derive(Debug, Clone)]
enum Loaded {
    /// Compiled from the capped bytes.
    Ready {
        /// The compiled module (structured-cloneable into the sandbox).
        module: WebAssembly::Module,
        /// What the ABI check learned.
        info: ModuleInfo,
    },
    /// Fails before running, whatever the input.
    FailsAtStart(Failure),
}

/// Runs task-module chunks through a [`ModuleHost`].
#[derive(Debug)]
pub struct ModuleRunner {
    /// The JavaScript side.
    host: ModuleHost,
    /// Loaded modules by (id, cap in MiB), oldest first.
    cache: RefCell<VecDeque<((String, u32), Loaded)>>,
}

impl ModuleRunner {
    /// A runner over `host`.
    pub fn new(host: ModuleHost) -> ModuleRunner {
        ModuleRunner {
            host,
            cache: RefCell::new(VecDeque::new()),
        }
    }

    /// Stop the running chunk, if any.
    pub fn cancel(&self) {
        self.host.cancel();
    }

    /// Run `input` through `task`'s module, fetched from `url` unless cached. The sandbox is
    /// not started if `still_wanted` says the chunk was abandoned while the module loaded.
    pub async fn run(
        &self,
        url: &str,
        task: &ModuleTask,
        input: &serde_json::Value,
        still_wanted: impl Fn() -> bool,
    ) -> ChunkEnd {
        let loaded = match self.cached(task) {
            Some(loaded) => loaded,
            None => match self.load(url, task).await {
                Ok(loaded) => {
                    self.remember(task, loaded.clone());
                    loaded
                }
                Err(why) => return ChunkEnd::GiveBack(why),
            },
        };
        let (module, info) = match loaded {
            Loaded::Ready { module, info } => (module, info),
            Loaded::FailsAtStart(failure) => return failure.into(),
        };
        if !still_wanted() {
            return SandboxAnswer::Cancelled.end(task, &info);
        }
        let text = input_text(input);
        let wasi = match info.abi {
            Abi::Raw => JsValue::NULL,
            Abi::Wasi => {
                let settings = js_sys::Object::new();
                let seed = Uint8Array::from(wasi::random_seed(&task.id, &text).as_slice());
                // Setting a property on a fresh plain object does not fail.
                let _ = Reflect::set(&settings, &JsValue::from_str("seed"), &seed);
                settings.into()
            }
        };
        let input = Uint8Array::from(text.as_bytes());
        let answer = JsFuture::from(self.host.run(&module, &input, task.timeout_ms, &wasi)).await;
        let answer = match answer {
            Ok(answer) => parse_answer(&answer),
            Err(error) => SandboxAnswer::Crashed(describe(&error)),
        };
        answer.end(task, &info)
    }

    fn cached(&self, task: &ModuleTask) -> Option<Loaded> {
        let key = (task.id.as_str(), task.limit.mb);
        self.cache
            .borrow()
            .iter()
            .find(|((id, mb), _)| (id.as_str(), *mb) == key)
            .map(|(_, loaded)| loaded.clone())
    }

    fn remember(&self, task: &ModuleTask, loaded: Loaded) {
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.pop_front();
        }
        cache.push_back(((task.id.clone(), task.limit.mb), loaded));
    }

    /// Fetch, verify, cap and compile.
    async fn load(&self, url: &str, task: &ModuleTask) -> Result<Loaded, Unrunnable> {
        let bytes = JsFuture::from(self.host.fetch_module(url))
            .await
            .map_err(|error| {
                Unrunnable(format!(
                    "cannot fetch module {}: {}",
                    task.id,
                    describe(&error)
                ))
            })?;
        let bytes = bytes
            .dyn_into::<Uint8Array>()
            .map_err(|_| Unrunnable(format!("fetching module {} gave no bytes", task.id)))?;
        match prepare(task, &bytes.to_vec())? {
            Prepared::FailsAtStart(failure) => Ok(Loaded::FailsAtStart(failure)),
            Prepared::Ready { capped, info } => {
                // `WebAssembly.compileStreaming` would compile the response as it arrives,
                // but the bytes must be verified against their id and capped first, so the
                // module is compiled from the capped copy.
                let compiled =
                    JsFuture::from(WebAssembly::compile(&Uint8Array::from(capped.as_slice())))
                        .await
                        .map_err(|error| {
                            Unrunnable(format!(
                                "this browser cannot compile module {}: {}",
                                task.id,
                                describe(&error)
                            ))
                        })?;
                let module = compiled.dyn_into::<WebAssembly::Module>().map_err(|_| {
                    Unrunnable(format!("compiling module {} gave no module", task.id))
                })?;
                Ok(Loaded::Ready { module, info })
            }
        }
    }
}

impl Drop for ModuleRunner {
    fn drop(&mut self) {
        self.host.cancel();
    }
}

/// A JavaScript answer object as a [`SandboxAnswer`]; anything unexpected is a crash.
fn parse_answer(value: &JsValue) -> SandboxAnswer {
    let field = |name: &str| Reflect::get(value, &JsValue::from_str(name)).ok();
    let number = |name: &str| field(name).and_then(|v| v.as_f64());
    let kind = field("kind")
        .and_then(|kind| kind.as_string())
        .unwrap_or_default();
    // Pointers and lengths come from `>>> 0` (u32) and sizes from `byteLength`; anything
    // else is a broken sandbox, not an outcome.
    let u32_field = |name: &str| {
        number(name)
            .filter(|n| n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n))
            .map(|n| n as u32)
    };
    let bytes_field = |name: &str| {
        number(name)
            .filter(|n| n.fract() == 0.0 && *n >= 0.0 && *n <= 9_007_199_254_740_991.0)
            .map(|n| n as u64)
    };
    let bounds = || {
        Some((
            u32_field("ptr")?,
            u32_field("len")?,
            bytes_field("memoryBytes")?,
        ))
    };
    let broken = || SandboxAnswer::Crashed(format!("malformed sandbox answer of kind {kind:?}"));
    let bytes = |name: &str| {
        field(name)
            .and_then(|v| v.dyn_into::<Uint8Array>().ok())
            .map(|array| array.to_vec())
    };
    match kind.as_str() {
        answer::OUTPUT => match field("output").and_then(|v| v.dyn_into::<Uint8Array>().ok()) {
            Some(output) => SandboxAnswer::Output(output.to_vec()),
            None => broken(),
        },
        answer::TRAP => SandboxAnswer::Trap {
            message: field("message")
                .and_then(|m| m.as_string())
                .unwrap_or_default(),
            memory_bytes: bytes_field("memoryBytes"),
            stderr: bytes("stderr").unwrap_or_default(),
        },
        answer::EXIT => match (u32_field("code"), bytes("stdout"), bytes("stderr")) {
            (Some(code), Some(stdout), Some(stderr)) => SandboxAnswer::Exited {
                code,
                stdout,
                stderr,
            },
            _ => broken(),
        },
        answer::STDOUT_TOO_LARGE => match bytes("stderr") {
            Some(stderr) => SandboxAnswer::StdoutTooLarge { stderr },
            None => broken(),
        },
        answer::ALLOC_OUT_OF_BOUNDS => match bounds() {
            Some((ptr, len, memory_bytes)) => SandboxAnswer::AllocOutOfBounds {
                ptr,
                len,
                memory_bytes,
            },
            None => broken(),
        },
        answer::OUTPUT_OUT_OF_BOUNDS => match bounds() {
            Some((ptr, len, memory_bytes)) => SandboxAnswer::OutputOutOfBounds {
                ptr,
                len,
                memory_bytes,
            },
            None => broken(),
        },
        answer::TIMEOUT => SandboxAnswer::TimedOut,
        answer::CANCELLED => SandboxAnswer::Cancelled,
        answer::CRASHED => SandboxAnswer::Crashed(
            field("reason")
                .and_then(|r| r.as_string())
                .unwrap_or_else(|| "unknown reason".into()),
        ),
        _ => broken(),
    }
}

/// A JavaScript error (or anything thrown) as text.
fn describe(error: &JsValue) -> String {
    if let Some(error) = error.dyn_ref::<js_sys::Error>() {
        String::from(error.message())
    } else {
        error.as_string().unwrap_or_else(|| format!("{error:?}"))
    }
}
