# Multi-stage build: compile in the Rust image, run from a slim Debian with only the binary.
# (The health check uses bash: its /dev/tcp saves installing curl.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p telltale && strip target/release/telltale

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/telltale --create-home telltale
COPY --from=build /src/target/release/telltale /usr/local/bin/telltale
USER telltale
WORKDIR /var/lib/telltale
ENV TELLTALE_LISTEN=0.0.0.0:8080 TELLTALE_DATA_DIR=/var/lib/telltale/data LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["telltale"]
CMD ["serve"]
