//! WASI command modules in the sandbox: wasmtime-wasi's preview 1, cut down to the grid's
//! deterministic subset (`grid_task_abi::wasi`, `docs/task-abi.md`).
//!
//! - [`linker`]: wasmtime-wasi's preview 1 functions, then every function the grid refuses
//!   shadowed by one that only returns its `errno` (files, sockets, polling...), `proc_exit`
//!   by one that ends the run with a [`ProgramExit`] of any code, and `random_get` by one that
//!   checks the buffer before drawing the bytes (wasmtime-wasi's draws all `len` bytes into a
//!   fresh vector first: 4 GiB of the worker's memory, outside the chunk's cap).
//! - [`run`]: one chunk. The context has the input as standard input, capped in-memory pipes
//!   as standard output and error ([`CappedPipe`]), `argv = [PROGRAM_NAME]`, no environment,
//!   no preopened directories, no network, clocks that never move ([`FixedClock`]) and the
//!   chunk's ChaCha20 random stream ([`ChunkRandom`]).
//!
//! The browser's shim (`frontend/src/sandbox.js`) answers every call the way wasmtime-wasi
//! answers it here, and both turn the end of a run into an outcome with
//! [`ProgramEnd::outcome`], so a browser and a native worker report the same bytes.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use grid_protocol::Outcome;
use grid_task_abi::outcome::input_text;
use grid_task_abi::wasi::{
    self, FUNCTIONS, MONOTONIC_NS, PROGRAM_NAME, ProgramEnd, REALTIME_NS, RESOLUTION_NS,
    STDERR_KEPT_BYTES, STDOUT_LIMIT_BYTES, Support,
};
use grid_task_abi::{Failure, TrapKind};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use wasmtime::{
    Caller, Engine, Extern, FuncType, InstancePre, Linker, Module, Store, Val, ValType,
};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamError, StreamResult};

use super::traps::{failure, trap_failure};
use super::{ChunkLimits, ChunkState, TaskModule, arm_deadline};

/// A WASI chunk's store data: the memory cap and the WASI context.
pub(super) struct WasiState {
    /// The cap on memory and tables (the same limiter as raw modules').
    limits: ChunkState,
    /// wasmtime-wasi's preview 1 state.
    wasi: WasiP1Ctx,
    /// The chunk's random stream, for `random_get`.
    random: ChunkRandom,
}

/// How a program ended by calling `proc_exit`.
#[derive(Debug, thiserror::Error)]
#[error("the program exited with code {0}")]
struct ProgramExit(u32);

/// The engine's linker for WASI command modules (see the module documentation); made once
/// per [`super::Sandbox`].
pub(super) fn linker(engine: &Engine) -> wasmtime::Result<Linker<WasiState>> {
    let mut linker = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |state: &mut WasiState| &mut state.wasi)?;
    linker.allow_shadowing(true);
    for function in FUNCTIONS {
        let Support::Refused(errno) = function.support else {
            continue;
        };
        let params = function.params.iter().map(|ty| match ty {
            wasmparser::ValType::I64 => ValType::I64,
            _ => ValType::I32,
        });
        let ty = FuncType::new(engine, params, [ValType::I32]);
        linker.func_new(wasi::MODULE, function.name, ty, move |_, _, results| {
            if let Some(result) = results.first_mut() {
                *result = Val::I32(errno);
            }
            Ok(())
        })?;
    }
    // wasmtime-wasi's own refuses codes of 126 and more; the grid reports any code.
    linker.func_wrap(
        wasi::MODULE,
        "proc_exit",
        |code: i32| -> wasmtime::Result<()> { Err(ProgramExit(code as u32).into()) },
    )?;
    linker.func_wrap(
        wasi::MODULE,
        "random_get",
        |mut caller: Caller<'_, WasiState>, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
                return Err(wasmtime::Error::msg("random_get: the module has no memory"));
            };
            // Unsigned addresses, as everywhere in WASI.
            let (start, len) = (ptr as u32 as usize, len as u32 as usize);
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let Some(buffer) = start
                .checked_add(len)
                .and_then(|end| data.get_mut(start..end))
            else {
                return Err(wasmtime::Error::msg("random_get: buffer outside memory"));
            };
            state.random.fill_bytes(buffer);
            Ok(0)
        },
    )?;
    Ok(linker)
}

/// `module` resolved against the linker, ready to instantiate quickly per chunk.
pub(super) fn prepare(
    linker: &Linker<WasiState>,
    module: &Module,
) -> wasmtime::Result<InstancePre<WasiState>> {
    linker.instantiate_pre(module)
}

/// Run one chunk of a WASI command module.
pub(super) fn run(
    task: &TaskModule,
    pre: &InstancePre<WasiState>,
    input: &serde_json::Value,
    limits: ChunkLimits,
) -> Outcome {
    let text = input_text(input);
    let seed = wasi::random_seed(&task.id, &text);
    let stdout = CappedPipe::new(STDOUT_LIMIT_BYTES, Overflow::Fail);
    let stderr = CappedPipe::new(STDERR_KEPT_BYTES, Overflow::Drop);
    let context = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(text.into_bytes()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .arg(PROGRAM_NAME)
        .wall_clock(FixedClock)
        .monotonic_clock(FixedClock)
        .secure_random(ChunkRandom::new(seed))
        .insecure_random(ChunkRandom::new(seed))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build_p1();
    let mut store = Store::new(
        pre.module().engine(),
        WasiState {
            limits: ChunkState::new(limits.memory, &task.table_element_bytes),
            wasi: context,
            random: ChunkRandom::new(seed),
        },
    );
    store.limiter(|state| &mut state.limits);
    arm_deadline(&mut store, limits.timeout_ms);

    let end = match pre.instantiate(&mut store) {
        Err(_) if store.data().limits.refused_at_start => {
            ProgramEnd::Failed(Failure::MemoryAtStart {
                memory_bytes: task.info.initial_bytes(),
                table_bytes: task.info.initial_table_bytes,
                limit: limits.memory,
            })
        }
        Err(error) => ProgramEnd::Failed(failure(
            &error,
            &task.sites,
            task.info.initial_bytes(),
            limits,
        )),
        Ok(instance) => {
            let (Some(memory), Ok(start)) = (
                instance.get_memory(&mut store, "memory"),
                instance.get_typed_func::<(), ()>(&mut store, wasi::START),
            ) else {
                // `check_module` has seen these exports with these types.
                return trap_failure(TrapKind::Other, 0, limits).into();
            };
            match start.call(&mut store, ()) {
                Ok(()) => ProgramEnd::Exited(0),
                Err(error) => match error.downcast_ref::<ProgramExit>() {
                    Some(ProgramExit(code)) => ProgramEnd::Exited(*code),
                    // The write past the limit trapped; nothing after it counts.
                    None if stdout.overflowed() => ProgramEnd::StdoutTooLarge,
                    None => ProgramEnd::Failed(failure(
                        &error,
                        &task.sites,
                        memory.data_size(&store) as u64,
                        limits,
                    )),
                },
            }
        }
    };
    end.outcome(&stdout.contents(), &stderr.contents(), limits.output)
}

/// The clocks of every chunk: realtime [`REALTIME_NS`], monotonic [`MONOTONIC_NS`], neither
/// ever moving.
struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(RESOLUTION_NS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(REALTIME_NS)
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        RESOLUTION_NS
    }

    fn now(&self) -> u64 {
        MONOTONIC_NS
    }
}

/// The chunk's random stream: the ChaCha20 keystream of its seed, byte after byte.
///
/// wasmtime-wasi's `random_get` draws each byte with `next_u32() as u8`, so `next_u32` hands
/// out one keystream byte; the bytes a program sees are then exactly the keystream's, in
/// order, however it splits its calls (what the browser's shim reproduces).
struct ChunkRandom {
    /// The keystream, four bytes at a time.
    keystream: ChaCha20Rng,
    /// The word being handed out and how many of its bytes are gone.
    word: [u8; 4],
    used: usize,
}

impl ChunkRandom {
    fn new(seed: [u8; 32]) -> ChunkRandom {
        ChunkRandom {
            keystream: ChaCha20Rng::from_seed(seed),
            word: [0; 4],
            used: 4,
        }
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 4 {
            self.word = self.keystream.next_u32().to_le_bytes();
            self.used = 0;
        }
        let byte = self.word.get(self.used).copied().unwrap_or_default();
        self.used += 1;
        byte
    }
}

impl RngCore for ChunkRandom {
    fn next_u32(&mut self) -> u32 {
        u32::from(self.next_byte())
    }

    fn next_u64(&mut self) -> u64 {
        u64::from(self.next_byte())
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for byte in dest {
            *byte = self.next_byte();
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// What a [`CappedPipe`] does with bytes past its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overflow {
    /// Trap the write and remember it (standard output: the chunk fails).
    Fail,
    /// Drop them and report them written (standard error: only its start is kept).
    Drop,
}

/// An in-memory output stream holding at most `capacity` bytes.
#[derive(Clone)]
struct CappedPipe {
    /// What was written (at most `capacity` bytes) and whether more was tried.
    buffer: Arc<Mutex<(Vec<u8>, bool)>>,
    capacity: usize,
    overflow: Overflow,
}

impl CappedPipe {
    fn new(capacity: usize, overflow: Overflow) -> CappedPipe {
        CappedPipe {
            buffer: Arc::default(),
            capacity,
            overflow,
        }
    }

    /// The bytes kept.
    fn contents(&self) -> Vec<u8> {
        self.lock().0.clone()
    }

    /// Whether a write went past the capacity.
    fn overflowed(&self) -> bool {
        self.lock().1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, bool)> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take `bytes`: `false` when they do not fit and the write must fail.
    fn take(&self, bytes: &[u8]) -> bool {
        let mut buffer = self.lock();
        let room = self.capacity.saturating_sub(buffer.0.len());
        if bytes.len() <= room {
            buffer.0.extend_from_slice(bytes);
            return true;
        }
        buffer.1 = true;
        match self.overflow {
            Overflow::Fail => false,
            Overflow::Drop => {
                buffer
                    .0
                    .extend_from_slice(bytes.get(..room).unwrap_or_default());
                true
            }
        }
    }

    fn too_large(&self) -> String {
        format!("more than {} bytes written to a capped pipe", self.capacity)
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.take(&bytes) {
            Ok(())
        } else {
            Err(StreamError::trap(&self.too_large()))
        }
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready for more: `write` decides.
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(if self.take(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::Error::other(self.too_large()))
        })
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_random_stream_is_the_chacha20_keystream() {
        // RFC 8439 2.3.2's block function test vector uses a nonce; with key 0 and nonce 0 the
        // first keystream block begins 76 b8 e0 ad a0 f1 3d 90 (the original ChaCha20 vector).
        let mut random = ChunkRandom::new([0; 32]);
        let mut first = [0_u8; 8];
        random.fill_bytes(&mut first);
        assert_eq!(first, [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90]);
        // One byte per `next_u32`, continuing the same stream.
        assert_eq!(random.next_u32(), 0x40);
    }

    #[test]
    fn pipes_keep_what_fits() {
        let stderr = CappedPipe::new(4, Overflow::Drop);
        assert!(stderr.take(b"abc") && stderr.take(b"def"));
        assert_eq!(stderr.contents(), b"abcd");
        let stdout = CappedPipe::new(4, Overflow::Fail);
        assert!(stdout.take(b"abcd") && !stdout.overflowed());
        assert!(!stdout.take(b"e"));
        assert!(stdout.overflowed());
        assert_eq!(stdout.contents(), b"abcd");
    }
}
