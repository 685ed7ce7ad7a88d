// Hostile: writes 100 MiB to standard output.
// Build: clang --target=wasm32-wasi -O2 -o hostile-floods-stdout.wasm floods_stdout.c
#include <stdio.h>
#include <string.h>

int main(void) {
    static char block[64 * 1024];
    memset(block, 'x', sizeof block);
    fprintf(stderr, "flooding\n");
    for (int i = 0; i < 1600; i++) fwrite(block, 1, sizeof block, stdout);
    return 0;
}
