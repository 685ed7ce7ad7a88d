// The raw task ABI from C, with no libc: grid_alloc hands out a static buffer, grid_run
// parses the input (a JSON integer n) and returns the JSON text of 1² + 2² + ... + n², computed
// in 128-bit arithmetic (n(n+1)(2n+1) passes 2^64 well before n = 3,000,000). 128-bit multiplication is a call to
// compiler-rt's __multi3, hence the builtins archive on the command line.
//
// Build (Debian: apt-get install clang lld libclang-rt-14-dev-wasm32):
//   clang --target=wasm32 -O2 -nostdlib -Wl,--no-entry -Wl,--export=grid_alloc \
//     -Wl,--export=grid_run -o sum-squares.wasm examples/c/sum_squares_raw.c \
//     /usr/lib/llvm-14/lib/clang/14.0.6/lib/wasi/libclang_rt.builtins-wasm32.a
typedef unsigned long long u64;
typedef unsigned __int128 u128;

static char input[64];
static char output[128];

__attribute__((export_name("grid_alloc"))) char *grid_alloc(int len) {
    return len <= (int)sizeof input ? input : 0;
}

static long long text(const char *s, int len) {
    return ((long long)(unsigned)(unsigned long)s << 32) | (unsigned)len;
}

static long long error(const char *message) {
    int len = 0;
    const char *prefix = "{\"error\":\"";
    while (*prefix) output[len++] = *prefix++;
    while (*message) output[len++] = *message++;
    output[len++] = '"';
    output[len++] = '}';
    return text(output, len);
}

__attribute__((export_name("grid_run"))) long long grid_run(const char *in, int len) {
    u64 n = 0;
    if (len == 0 || len > 7) return error("input must be an integer from 0 to 3000000");
    for (int i = 0; i < len; i++) {
        if (in[i] < '0' || in[i] > '9') return error("input must be an integer from 0 to 3000000");
        n = n * 10 + (u64)(in[i] - '0');
    }
    if (n > 3000000ULL) return error("input must be an integer from 0 to 3000000");
    u128 sum = (u128)n * (n + 1) * (2 * n + 1) / 6;
    char digits[40];
    int count = 0;
    do {
        digits[count++] = (char)('0' + (int)(sum % 10));
        sum /= 10;
    } while (sum != 0);
    for (int i = 0; i < count; i++) output[i] = digits[count - 1 - i];
    return text(output, count);
}
