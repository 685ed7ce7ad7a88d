# syntax=docker/dockerfile:1
# grid-server in one self-contained binary (the contribute page and the wasm worker are
# embedded at build time), on a slim runtime image, as a non-root user.

FROM rust:1.95-bookworm AS build
# npm installs the pages' packages (the dashboard's chart) from frontend/package-lock.json.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add wasm32-unknown-unknown \
 && (cargo install wasm-bindgen-cli --version 0.2.130 --locked \
     || cargo install wasm-bindgen-cli --version 0.2.130)
WORKDIR /src
COPY . .
RUN cargo xtask build \
 && cp target/release/grid-server target/release/grid-worker /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/grid --create-home grid
COPY --from=build /usr/local/bin/grid-server /usr/local/bin/grid-worker /usr/local/bin/
USER grid
WORKDIR /var/lib/grid
# Without DATABASE_URL the master keeps its state in the embedded database under
# GRID_DATA_DIR (mount a volume there); set DATABASE_URL for PostgreSQL.
ENV GRID_LISTEN=0.0.0.0:8080 \
    GRID_DATA_DIR=/var/lib/grid/data
VOLUME ["/var/lib/grid/data"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/grid-server"]
