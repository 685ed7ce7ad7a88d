//! The two buffers the task ABI hands across the module boundary.
//!
//! The worker asks `grid_alloc(len)` for room, writes the input there, and calls
//! `grid_run(ptr, len)`; then it reads the output at the address `grid_run` returned, after
//! `grid_run` has returned. So the input buffer must stay allocated between the two calls and
//! the output buffer after the second: [`Buffers`] owns both. The addresses are handed out as
//! integers; `grid_run` only accepts back the buffer `grid_alloc` handed out, so a host that
//! passes anything else gets a trap, never a read of memory the module does not own.
//!
//! Addresses here are `usize` so that all of this runs natively in tests; [`crate::abi`]
//! converts them to the ABI's 32-bit integers.

/// The input and output buffers of one module instance.
#[derive(Debug, Default)]
pub struct Buffers {
    /// Handed out by the last [`Buffers::alloc_input`]; the worker writes the input here.
    input: Vec<u8>,
    /// The last output, kept alive for the worker to read after `grid_run` returns.
    output: Vec<u8>,
}

impl Buffers {
    /// No buffers yet (`const`, for the instance's `static`).
    pub const fn new() -> Buffers {
        Buffers {
            input: Vec::new(),
            output: Vec::new(),
        }
    }

    /// `grid_alloc`: a zeroed buffer of `len` bytes, replacing (and freeing) the previous one;
    /// returns its address. An allocation failure aborts (a trap), as Rust's allocation does.
    pub fn alloc_input(&mut self, len: usize) -> usize {
        self.input = vec![0; len];
        // The cast exposes the buffer's provenance: the host writes through this address.
        self.input.as_mut_ptr() as usize
    }

    /// `grid_run`: take the input at `addr`, `len` bytes long, which must lie in the buffer
    /// [`Buffers::alloc_input`] handed out; run `answer` on it; keep the output. Returns the
    /// output's address and length, or `None` when `addr`/`len` is not that buffer. The input
    /// buffer is freed either way.
    pub fn run(
        &mut self,
        addr: usize,
        len: usize,
        answer: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Option<(usize, usize)> {
        let mut input = std::mem::take(&mut self.input);
        if addr != input.as_ptr() as usize || len > input.len() {
            return None;
        }
        input.truncate(len);
        // Free the previous output first: an instance keeps at most one of each buffer.
        self.output = Vec::new();
        self.output = answer(&input);
        Some((self.output.as_ptr() as usize, self.output.len()))
    }
}

#[cfg(test)]
mod tests {
    // The tests play the host: they write the input and read the output through the raw
    // addresses, as a WebAssembly engine does through the module's memory.
    #![allow(unsafe_code)]

    use super::*;

    /// Write `bytes` where `alloc_input` said, as the worker does.
    fn host_write(buffers: &mut Buffers, bytes: &[u8]) -> usize {
        let addr = buffers.alloc_input(bytes.len());
        let ptr = std::ptr::with_exposed_provenance_mut::<u8>(addr);
        // SAFETY: `alloc_input` returned the address of a live `bytes.len()`-byte buffer whose
        // provenance it exposed, and nothing else refers to it until `run` takes it back.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, bytes.len()) };
        addr
    }

    /// Read the output where `run` said, as the worker does after `grid_run` returns.
    fn host_read(addr: usize, len: usize) -> Vec<u8> {
        let ptr = std::ptr::with_exposed_provenance::<u8>(addr);
        // SAFETY: `run` returned the address and length of the output it keeps alive in
        // `Buffers` until the next call.
        unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec()
    }

    #[test]
    fn the_host_writes_the_input_and_reads_the_output() {
        let mut buffers = Buffers::new();
        let input = br#"{"greeting":"hello"}"#;
        let addr = host_write(&mut buffers, input);
        let (out, len) = buffers
            .run(addr, input.len(), |input| {
                assert_eq!(input, br#"{"greeting":"hello"}"#);
                b"\"hello, grid\"".to_vec()
            })
            .unwrap_or_else(|| panic!("run refused the buffer alloc_input handed out"));
        assert_eq!(host_read(out, len), b"\"hello, grid\"");
        // The output is still there after other allocations.
        let _other = vec![0xaa_u8; 4096];
        assert_eq!(host_read(out, len), b"\"hello, grid\"");
    }

    #[test]
    fn a_shorter_length_reads_a_prefix_and_an_empty_input_works() {
        let mut buffers = Buffers::new();
        let addr = host_write(&mut buffers, b"[1]trailing");
        let (out, len) = buffers
            .run(addr, 3, <[u8]>::to_vec)
            .unwrap_or_else(|| panic!("refused a prefix"));
        assert_eq!(host_read(out, len), b"[1]");

        let addr = host_write(&mut buffers, b"");
        assert!(buffers.run(addr, 0, |input| input.to_vec()).is_some());
    }

    #[test]
    fn only_the_allocated_buffer_is_accepted() {
        let mut buffers = Buffers::new();
        let addr = host_write(&mut buffers, b"null");
        assert_eq!(buffers.run(addr + 1, 3, <[u8]>::to_vec), None);

        let addr = host_write(&mut buffers, b"null");
        assert_eq!(buffers.run(addr, 5, <[u8]>::to_vec), None);

        // The input is taken by the first run: running again needs a new `grid_alloc`.
        let addr = host_write(&mut buffers, b"null");
        assert!(buffers.run(addr, 4, <[u8]>::to_vec).is_some());
        assert_eq!(buffers.run(addr, 4, <[u8]>::to_vec), None);
    }
}
