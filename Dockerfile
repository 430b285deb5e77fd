# ferry container image: a static-ish release build on Debian, run as a non-root user.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin ferry

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home ferry
COPY --from=build /src/target/release/ferry /usr/local/bin/ferry
USER ferry
ENTRYPOINT ["/usr/local/bin/ferry"]
CMD ["run", "--config", "/etc/ferry/ferry.toml"]
