# One image with the edgeroute binaries. Build: docker build -t edgeroute .
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p edgeroute-proxy -p edgeroute-control \
 && cp target/release/edgeroute-proxy target/release/edgeroute-control /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/edgeroute-proxy /usr/local/bin/edgeroute-control /usr/local/bin/
# The control plane's history file (config/examples/control-aws.toml);
# mount a volume here to keep it across restarts.
RUN mkdir -p /var/lib/edgeroute && chown 65532:65532 /var/lib/edgeroute
# Unprivileged; listen on ports above 1024. The admin port answers from
# outside the container only with admin.address on 0.0.0.0 (and a token).
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/edgeroute-proxy"]
CMD ["run", "--config", "/etc/edgeroute/edgeroute.toml"]
