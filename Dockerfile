# attribd image: a deployment build (the release-lto profile, see Cargo.toml) on Debian
# (same base as the CI machines). Its final link wants a few GB of memory.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile release-lto --locked && cp target/release-lto/attribd /usr/local/bin/attribd

FROM debian:bookworm-slim
COPY --from=build /usr/local/bin/attribd /usr/local/bin/attribd
COPY pipelines /etc/attribd/pipelines
WORKDIR /var/lib/attribd
ENTRYPOINT ["attribd"]
CMD ["run", "--pipeline", "/etc/attribd/pipelines/default.toml", "--out", "/var/lib/attribd/data"]
