// A WASI command module in plain C: reads its input, e.g. {"n":27}, from standard input and
// prints the Collatz (hailstone) trajectory of n as JSON on standard output: {"n":27,"peak":9232,"steps":111}.
// A bad input is reported on standard error with exit code 2, which fails the chunk.
//
// Build (Debian: apt-get install clang lld wasi-libc):
//   clang --target=wasm32-wasi -O2 -o hailstone.wasm examples/c/hailstone.c
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
    char input[256];
    size_t len = fread(input, 1, sizeof input - 1, stdin);
    input[len] = '\0';
    // The grid writes inputs as canonical JSON: no whitespace, so this pattern is exact.
    const char *field = strstr(input, "\"n\":");
    uint64_t n;
    // scanf's %u would take "-1" as 2^64 - 1: the value must start with a digit.
    if (field == NULL || field[4] < '0' || field[4] > '9' ||
        sscanf(field + 4, "%" SCNu64, &n) != 1 || n == 0) {
        fprintf(stderr, "expected {\"n\": <positive integer>}, got %s\n", input);
        return 2;
    }
    uint64_t value = n, peak = n, steps = 0;
    while (value != 1) {
        value = value % 2 ? 3 * value + 1 : value / 2;
        if (value > peak) peak = value;
        steps++;
    }
    printf("{\"n\":%" PRIu64 ",\"peak\":%" PRIu64 ",\"steps\":%" PRIu64 "}\n", n, peak, steps);
    return 0;
}
