// Hostile: tries to use the network (WASI preview 1 can only accept on an inherited socket).
// Build: clang --target=wasm32-wasi -O2 -o hostile-opens-socket.wasm opens_socket.c
#include <stdio.h>
#include <wasi/api.h>

int main(void) {
    __wasi_fd_t fd;
    fprintf(stderr, "sock_accept(3): errno %d\n", __wasi_sock_accept(3, 0, &fd));
    fprintf(stderr, "sock_shutdown(0): errno %d\n", __wasi_sock_shutdown(0, __WASI_SDFLAGS_WR));
    __wasi_subscription_t sleep = {.u = {.tag = __WASI_EVENTTYPE_CLOCK}};
    sleep.u.u.clock.id = __WASI_CLOCKID_MONOTONIC;
    sleep.u.u.clock.timeout = 1000000000;
    __wasi_event_t event;
    __wasi_size_t count;
    fprintf(stderr, "poll_oneoff(sleep 1 s): errno %d\n", __wasi_poll_oneoff(&sleep, &event, 1, &count));
    return 1;
}
