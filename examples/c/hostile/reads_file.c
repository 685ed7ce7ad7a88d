// Hostile: tries to read the worker's files, through libc and through WASI directly.
// Build: clang --target=wasm32-wasi -O2 -o hostile-reads-file.wasm reads_file.c
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <wasi/api.h>

int main(void) {
    FILE *file = fopen("/etc/passwd", "r");
    if (file != NULL) {
        char line[256];
        printf("\"%s\"\n", fgets(line, sizeof line, file) ? "read the file!" : "opened the file!");
        return 0;
    }
    fprintf(stderr, "fopen(/etc/passwd): %s\n", strerror(errno));
    __wasi_fd_t fd;
    __wasi_errno_t raw = __wasi_path_open(3, 0, "etc/passwd", 0, __WASI_RIGHTS_FD_READ, 0, 0, &fd);
    fprintf(stderr, "path_open(3, etc/passwd): errno %d\n", raw);
    __wasi_prestat_t prestat;
    fprintf(stderr, "fd_prestat_get(3): errno %d\n", __wasi_fd_prestat_get(3, &prestat));
    return 1;
}
