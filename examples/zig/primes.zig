// A WASI command module in Zig: reads {"end":B,"start":A} from standard input and prints
// {"count":N} on standard output, the number of primes in [A, B) (at most 10,000,000 wide).
//
// Build (PyPI: pip install ziglang):
//   python -m ziglang build-exe -target wasm32-wasi -O ReleaseSmall -femit-bin=primes-zig.wasm examples/zig/primes.zig
const std = @import("std");

fn field(input: []const u8, name: []const u8) ?u64 {
    const at = std.mem.indexOf(u8, input, name) orelse return null;
    var i = at + name.len;
    var value: u64 = 0;
    var digits: usize = 0;
    while (i < input.len and input[i] >= '0' and input[i] <= '9') : (i += 1) {
        value = value * 10 + (input[i] - '0');
        digits += 1;
        if (digits > 18) return null;
    }
    return if (digits == 0) null else value;
}

fn isPrime(n: u64) bool {
    if (n < 2) return false;
    if (n % 2 == 0) return n == 2;
    var d: u64 = 3;
    while (d * d <= n) : (d += 2) {
        if (n % d == 0) return false;
    }
    return true;
}

const wasi = std.os.wasi;

/// Standard output, straight through WASI (Zig's standard I/O layer changes between releases;
/// these calls do not).
fn write(text: []const u8) bool {
    var done: usize = 0;
    while (done < text.len) {
        const iov = [_]wasi.ciovec_t{.{ .base = text[done..].ptr, .len = text.len - done }};
        var n: usize = 0;
        if (wasi.fd_write(1, &iov, 1, &n) != .SUCCESS) return false;
        done += n;
    }
    return true;
}

pub fn main() u8 {
    var buffer: [256]u8 = undefined;
    var len: usize = 0;
    while (len < buffer.len) {
        const iov = [_]wasi.iovec_t{.{ .base = buffer[len..].ptr, .len = buffer.len - len }};
        var n: usize = 0;
        if (wasi.fd_read(0, &iov, 1, &n) != .SUCCESS) return 1;
        if (n == 0) break;
        len += n;
    }
    const input = buffer[0..len];
    const start = field(input, "\"start\":") orelse return 2;
    const end = field(input, "\"end\":") orelse return 2;
    if (end < start or end - start > 10_000_000) return 2;
    var count: u64 = 0;
    var n = start;
    while (n < end) : (n += 1) {
        if (isPrime(n)) count += 1;
    }
    var out: [64]u8 = undefined;
    const text = std.fmt.bufPrint(&out, "{{\"count\":{d}}}\n", .{count}) catch return 1;
    return if (write(text)) 0 else 1;
}
