# pgwarden container image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t pgwarden .
#   docker compose up -d        # postgres with pgwarden in front: see compose.yaml
#   docker run --network host -v /etc/pgwarden/tls:/etc/pgwarden/tls:ro pgwarden
#                               # in front of the host's own postgres on 127.0.0.1:5432
#
# pgwarden must reach postgres on loopback, so it runs in postgres's
# network namespace (compose.yaml) or in the host's (--network host); a
# container with a network of its own cannot reach the host's 127.0.0.1.
#
# The binary is static (CGO_ENABLED=0), so the final image is distroless
# "static": no shell, no package manager, no libc, running as uid 65532.
# Its default configuration is contrib/pgwarden.yaml, commented; it expects
# the server certificate and key in /etc/pgwarden/tls, readable by uid
# 65532.

# Pinned to the go directive in go.mod; GOTOOLCHAIN=local makes a mismatch a
# build error instead of a silent toolchain download.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
ENV CGO_ENABLED=0 GOTOOLCHAIN=local
WORKDIR /src
# Modules first, so source edits do not invalidate the download layer.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
# .git is not in the build context (.dockerignore), so the version comes
# from the build argument rather than VCS stamping.
ARG VERSION=dev
RUN go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /pgwarden ./cmd/pgwarden \
 && /pgwarden version

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pgwarden /pgwarden
COPY contrib/pgwarden.yaml /etc/pgwarden/pgwarden.yaml
# distroless "nonroot" is 65532:65532; numeric so that runtimes enforcing
# runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# The default listen port. Binding it as non-root works because 5432 > 1024.
EXPOSE 5432
# No shell in the image, so the check is the binary itself: exit 0 when the
# admin endpoint's /readyz answers 200 (listening, every upstream accepts a
# connection, not draining). The default configuration puts the admin
# endpoint on 127.0.0.1:9187, which `pgwarden health` asks by default; with
# another, pass --url.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 CMD ["/pgwarden", "health"]
ENTRYPOINT ["/pgwarden"]
CMD ["serve", "--config", "/etc/pgwarden/pgwarden.yaml"]
