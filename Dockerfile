# syntax=docker/dockerfile:1
# The operator image: one `ratio1` binary on distroless (glibc + libgcc),
# non-root. The offline equivalent, built and tested by `bash e2e/test.sh`
# without any registry, is `e2e/images.sh` (ratio1.local/ratio1-operator:dev:
# the same binary on a root filesystem with exactly the libraries `ldd`
# lists, uid/gid 65532).

FROM rust:1-bookworm AS build
# protoc and the well-known types etcd's protobufs import: for crates that
# compile protobufs at build time (etcd-client).
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so that a source change reuses their layer. Every
# target Cargo.toml declares must exist for cargo to read the manifest:
# the binary, the library, the e2e test and the benchmarks.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src e2e/tests benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > e2e/tests/main.rs \
    && echo 'fn main() {}' > benches/federation.rs && echo 'fn main() {}' > benches/cstore.rs \
    && cargo build --release --locked --bin ratio1 && rm -rf src e2e benches
COPY src ./src
COPY e2e/tests ./e2e/tests
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin ratio1 \
    && install -D -m 0755 target/release/ratio1 /out/ratio1

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ratio1 /usr/local/bin/ratio1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ratio1"]
CMD ["operator"]
