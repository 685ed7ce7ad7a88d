// A WASI command module that reads the clock and random bytes, as ordinary C does (time(),
// clock_gettime(), getentropy(), rand() seeded from them). On the grid both are fixed per
// chunk (docs/task-abi.md), so every replica prints the same: input {"rolls":5} gives
// {"monotonic_ns":...,"random":"<hex>","rolls":[...],"time":...}.
//
// Build: clang --target=wasm32-wasi -O2 -o dice.wasm examples/c/dice.c
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    char input[128];
    size_t len = fread(input, 1, sizeof input - 1, stdin);
    input[len] = '\0';
    const char *field = strstr(input, "\"rolls\":");
    int rolls = field ? atoi(field + 8) : 0;
    if (rolls < 0 || rolls > 1000) {
        fprintf(stderr, "rolls must be from 0 to 1000\n");
        return 2;
    }
    unsigned char entropy[16];
    if (getentropy(entropy, sizeof entropy) != 0) {
        perror("getentropy");
        return 1;
    }
    struct timespec monotonic;
    clock_gettime(CLOCK_MONOTONIC, &monotonic);
    time_t now = time(NULL);
    unsigned seed;
    memcpy(&seed, entropy, sizeof seed);
    srand(seed);

    printf("{\"monotonic_ns\":%" PRId64 ",\"random\":\"",
           (int64_t)monotonic.tv_sec * 1000000000 + monotonic.tv_nsec);
    for (size_t i = 0; i < sizeof entropy; i++) printf("%02x", entropy[i]);
    printf("\",\"rolls\":[");
    for (int i = 0; i < rolls; i++) printf(i ? ",%d" : "%d", rand() % 6 + 1);
    printf("],\"time\":%" PRId64 "}\n", (int64_t)now);
    return 0;
}
