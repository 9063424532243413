# Multi-stage build: a static-enough binary on a distroless base, running as non-root.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin kube-audit-relay

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kube-audit-relay /usr/local/bin/kube-audit-relay
# 65532 = nonroot in distroless; the queue directory must be writable by it.
USER 65532:65532
EXPOSE 8443 9090
ENTRYPOINT ["/usr/local/bin/kube-audit-relay"]
CMD ["run", "--config", "/etc/kube-audit-relay/relay.toml"]
