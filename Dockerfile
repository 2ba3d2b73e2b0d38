# attribd image: a release build on Debian (same base as the CI machines).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/attribd /usr/local/bin/attribd

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/attribd /usr/local/bin/attribd
COPY pipelines /etc/attribd/pipelines
WORKDIR /var/lib/attribd
ENTRYPOINT ["attribd"]
CMD ["run", "--pipeline", "/etc/attribd/pipelines/default.toml", "--out", "/var/lib/attribd/data"]
