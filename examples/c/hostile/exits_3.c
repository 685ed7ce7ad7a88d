// Hostile (or just failing): prints half an answer, complains, exits 3.
// Build: clang --target=wasm32-wasi -O2 -o hostile-exits-3.wasm exits_3.c
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    printf("{\"partial\":");
    fprintf(stderr, "giving up: the input is not to my liking\n");
    exit(3);
}
