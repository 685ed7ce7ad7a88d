//! What the exports of [`task!`](crate::task) call: the instance's one [`Buffers`], and the
//! conversions between wasm32 addresses and the ABI's integers.
//!
//! The ABI passes addresses and lengths as `i32` bit patterns (WebAssembly has no unsigned
//! types; a buffer may sit above 2 GiB) and returns the output as one `i64`,
//! `(address << 32) | length`. These functions only make sense in a wasm32 module: natively
//! an address does not fit in 32 bits, and [`grid_alloc`] panics.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::buffers::Buffers;

/// The instance's buffers. A module instance is single-threaded; the mutex only makes the
/// `static` safe to share and is never contended.
static BUFFERS: Mutex<Buffers> = Mutex::new(Buffers::new());

fn buffers() -> MutexGuard<'static, Buffers> {
    // A panic aborts a wasm module, so a poisoned lock can only be seen natively; the buffers
    // are consistent between calls either way.
    BUFFERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An ABI `i32` (address or length) as the unsigned value it stands for.
fn from_abi(value: i32) -> usize {
    value as u32 as usize
}

/// A wasm32 address as the ABI's 32 bits.
fn to_abi(addr: usize) -> u32 {
    u32::try_from(addr).expect("task modules run in 32-bit WebAssembly memories")
}

/// Pack an output address and length into `grid_run`'s return value.
pub fn pack(addr: u32, len: u32) -> i64 {
    ((u64::from(addr) << 32) | u64::from(len)) as i64
}

/// `grid_alloc(len)`: see [`Buffers::alloc_input`].
pub fn grid_alloc(len: i32) -> i32 {
    to_abi(buffers().alloc_input(from_abi(len))) as i32
}

/// `grid_run(ptr, len)` with `answer` as the task: see [`Buffers::run`]. Traps (panics) when
/// `ptr`/`len` is not the buffer `grid_alloc` returned: the host broke the ABI.
pub fn grid_run(ptr: i32, len: i32, answer: impl FnOnce(&[u8]) -> Vec<u8>) -> i64 {
    let (out, out_len) = buffers()
        .run(from_abi(ptr), from_abi(len), answer)
        .unwrap_or_else(|| {
            panic!("grid_run({ptr}, {len}): not the input buffer grid_alloc returned")
        });
    pack(to_abi(out), to_abi(out_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_pack_as_the_abi_says() {
        assert_eq!(pack(1024, 7), (1024_i64 << 32) | 7);
        assert_eq!(pack(0, 0), 0);
        // High addresses and lengths are unsigned: the packed value may be negative.
        assert_eq!(pack(u32::MAX, u32::MAX), -1);
        assert_eq!(pack(0x8000_0000, 1) as u64, 0x8000_0000_0000_0001);
        assert_eq!(from_abi(-1), u32::MAX as usize);
        assert_eq!(from_abi(16), 16);
    }
}
