# syntax=docker/dockerfile:1
# The Go go-plugin test plugin (tests/plugins/go-llm) for people with Docker: the same file,
# user, entrypoint and labels as the archive tests/images/build-all makes
# (tests/images/check-dockerfiles compares them).
#
#   docker build -f images/go-llm.Dockerfile \
#     --build-arg VERSION="$(tests/images/workspace-package version)" -t hector.dev/go-llm:dev .
ARG GO_VERSION=1.26
ARG SOURCE=https://github.com/hector-dev/hector-operator
ARG LICENSES=Apache-2.0

FROM golang:${GO_VERSION}-bookworm AS build
ARG VERSION
RUN test -n "$VERSION" || { echo 'pass --build-arg VERSION=$(tests/images/workspace-package version)' >&2; exit 1; }
WORKDIR /src
# build.sh generates Go code from the project's protos, then builds a static binary.
COPY proto/ proto/
COPY tests/plugins/go-llm/ tests/plugins/go-llm/
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    tests/plugins/go-llm/build.sh /out/go-llm && \
    tests/plugins/go-llm/build.sh /out/go-loader ./cmd/loader

# Started by hector-plugin-launcher with the go-plugin handshake, as Hector would start it.
FROM scratch AS go-llm
ARG VERSION
ARG SOURCE
ARG LICENSES
LABEL org.opencontainers.image.title="go-llm" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="${LICENSES}"
COPY --from=build /out/go-llm /plugin/go-llm
# A go-plugin host that loads plugins as Hector's loader does (for tests in agent Pods).
COPY --from=build /out/go-loader /usr/local/bin/go-loader
USER 65532:65532
ENTRYPOINT ["/plugin/go-llm"]
