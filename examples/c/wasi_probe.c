// Prints what each function of the grid's WASI subset answers, called directly (no libc in
// between), as one JSON object: the tests run it on a browser and a native worker and compare
// the bytes, so the browser's shim and wasmtime-wasi must agree on every detail. Inputs:
// "report" (the object), "bad-pointer" (an iovec outside memory: a trap), "misaligned" (a
// misaligned result pointer: a trap), "bad-clock" (clock id 4: a trap), "exit-200"
// (proc_exit(200)).
//
// Build: clang --target=wasm32-wasi -O2 -o wasi-probe.wasm examples/c/wasi_probe.c
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

static char out[8192];
static size_t used;

static void add(const char *text) {
    size_t len = strlen(text);
    memcpy(out + used, text, len);
    used += len;
}

static void number(const char *name, uint64_t value) {
    char text[64];
    snprintf(text, sizeof text, "%s\"%s\":%llu", used > 1 ? "," : "", name, (unsigned long long)value);
    add(text);
}

static void hex(const char *name, const uint8_t *bytes, size_t len) {
    char text[16];
    snprintf(text, sizeof text, "%s\"", used > 1 ? "," : "");
    add(text);
    add(name);
    add("\":\"");
    for (size_t i = 0; i < len; i++) {
        snprintf(text, sizeof text, "%02x", bytes[i]);
        add(text);
    }
    add("\"");
}

static uint8_t scratch[64] __attribute__((aligned(8)));

int main(void) {
    char input[64] = {0};
    __wasi_iovec_t in = {(uint8_t *)input, sizeof input - 1};
    __wasi_size_t n = 0;
    (void)__wasi_fd_read(0, &in, 1, &n);
    if (strstr(input, "bad-pointer")) {
        __wasi_ciovec_t *far = (__wasi_ciovec_t *)(uintptr_t)0xfffffff0u;
        (void)__wasi_fd_write(1, far, 1, &n);
        return 0;
    }
    if (strstr(input, "misaligned")) {
        (void)__wasi_fd_fdstat_get(1, (__wasi_fdstat_t *)(scratch + 1));
        return 0;
    }
    if (strstr(input, "bad-clock")) {
        __wasi_timestamp_t value;
        (void)__wasi_clock_time_get(4, 1, &value);
        return 0;
    }
    if (strstr(input, "exit-200")) __wasi_proc_exit(200);

    add("{");
    __wasi_size_t argc = 0, argv_size = 0;
    number("args_sizes_get", __wasi_args_sizes_get(&argc, &argv_size));
    number("argc", argc);
    number("argv_size", argv_size);
    uint8_t *argv[4];
    memset(scratch, 0xee, sizeof scratch);
    number("args_get", __wasi_args_get(argv, scratch));
    hex("argv0", scratch, 8);
    __wasi_size_t envc = 7, env_size = 7;
    number("environ_sizes_get", __wasi_environ_sizes_get(&envc, &env_size));
    number("envc", envc);
    number("env_size", env_size);
    for (__wasi_clockid_t clock = 0; clock < 4; clock++) {
        __wasi_timestamp_t value = 0xabcdef;
        char name[32];
        snprintf(name, sizeof name, "clock_res_get_%u", clock);
        number(name, __wasi_clock_res_get(clock, &value));
        snprintf(name, sizeof name, "clock_res_%u", clock);
        number(name, value);
        value = 0xabcdef;
        snprintf(name, sizeof name, "clock_time_get_%u", clock);
        number(name, __wasi_clock_time_get(clock, 1, &value));
        snprintf(name, sizeof name, "clock_time_%u", clock);
        number(name, value);
    }
    for (__wasi_fd_t fd = 0; fd < 4; fd++) {
        memset(scratch, 0xee, sizeof scratch);
        char name[32];
        snprintf(name, sizeof name, "fd_fdstat_get_%u", fd);
        number(name, __wasi_fd_fdstat_get(fd, (__wasi_fdstat_t *)scratch));
        snprintf(name, sizeof name, "fdstat_%u", fd);
        hex(name, scratch, 24);
        __wasi_prestat_t prestat;
        snprintf(name, sizeof name, "fd_prestat_get_%u", fd);
        number(name, __wasi_fd_prestat_get(fd, &prestat));
    }
    number("fd_prestat_dir_name", __wasi_fd_prestat_dir_name(3, scratch, 8));
    // Reads: nothing left of the input (it was read above), a zero-length buffer, wrong fds.
    __wasi_iovec_t empty = {scratch, 0};
    n = 99;
    number("fd_read_empty_at_end", __wasi_fd_read(0, &empty, 1, &n));
    number("fd_read_empty_at_end_n", n);
    number("fd_read_1", __wasi_fd_read(1, &in, 1, &n));
    number("fd_read_5", __wasi_fd_read(5, &in, 1, &n));
    __wasi_ciovec_t hello = {(const uint8_t *)"x", 1};
    number("fd_write_0", __wasi_fd_write(0, &hello, 1, &n));
    number("fd_write_9", __wasi_fd_write(9, &hello, 1, &n));
    // Several buffers: only the first non-empty one is written.
    __wasi_ciovec_t parts[3] = {{(const uint8_t *)"", 0}, {(const uint8_t *)"ab", 2}, {(const uint8_t *)"cd", 2}};
    number("fd_write_2_parts", __wasi_fd_write(2, parts, 3, &n));
    number("fd_write_2_parts_n", n);
    // The random stream continues across calls of any size.
    uint8_t random[40];
    (void)__wasi_random_get(random, 3);
    (void)__wasi_random_get(random + 3, 37);
    hex("random", random, sizeof random);
    number("random_get_0", __wasi_random_get(random, 0));
    number("sched_yield", __wasi_sched_yield());
    number("fd_close_1", __wasi_fd_close(1));
    __wasi_filesize_t offset;
    number("fd_seek_0", __wasi_fd_seek(0, 0, __WASI_WHENCE_SET, &offset));
    number("fd_sync_1", __wasi_fd_sync(1));
    __wasi_fd_t opened;
    number("path_open", __wasi_path_open(3, 0, "x", 0, 0, 0, 0, &opened));
    add("}\n");
    __wasi_ciovec_t report = {(const uint8_t *)out, used};
    (void)__wasi_fd_write(1, &report, 1, &n);
    return 0;
}
