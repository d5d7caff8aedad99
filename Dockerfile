# ce-supervisor, CPU image. Build: docker build -t ce-supervisor .
# Run:   docker run -p 50051:50051 -p 8000:8000 ce-supervisor [flags…]
# The builder runs scripts/build_release.sh, the same script serve.sh and
# the test suite run; the runtime stage holds the three executables, the
# default model and a non-root user. Mount another model at /models and
# pass --model to serve it.

FROM rust:1.95-slim-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build_release.sh

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin ce
COPY --from=builder /src/target/release/ce-supervisor /src/target/release/ce-tokenizer-worker /src/target/release/ce-model-worker /usr/local/bin/
COPY --from=builder /src/models/minilm-l6-ce /models/minilm-l6-ce
COPY conf/config.toml /etc/ce-supervisor/config.toml
USER 10001
EXPOSE 50051 8000
# Rings are memfds: no /dev/shm sizing needed. SIGTERM drains in-flight
# requests within shutdown_grace_ms (30 s) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ce-supervisor", "--config", "/etc/ce-supervisor/config.toml", "--model", "/models/minilm-l6-ce", "--host", "0.0.0.0"]
