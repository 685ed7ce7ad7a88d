// Hostile: never ends.
// Build: clang --target=wasm32-wasi -O2 -o hostile-spins.wasm spins.c
int main(void) {
    volatile unsigned long long turns = 0;
    for (;;) turns++;
}
