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
# Unprivileged; listen on ports above 1024.
USER 65532:65532
EXPOSE 8080 9901
ENTRYPOINT ["/usr/local/bin/edgeroute-proxy"]
CMD ["run", "--config", "/etc/edgeroute/edgeroute.toml"]
