# syntax=docker/dockerfile:1
# The operator image: one static-ish `ratio1` binary on distroless, non-root.

FROM rust:1-bookworm AS build
# protoc: etcd-client compiles etcd's protobufs at build time.
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that a source change reuses their layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src e2e/tests && echo 'fn main() {}' > src/main.rs && touch src/lib.rs e2e/tests/main.rs \
    && cargo build --release --locked --bin ratio1 && rm -rf src e2e
COPY src ./src
COPY e2e/tests ./e2e/tests
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ratio1 \
    && install -D -m 0755 target/release/ratio1 /out/ratio1

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ratio1 /usr/local/bin/ratio1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ratio1"]
CMD ["operator"]
