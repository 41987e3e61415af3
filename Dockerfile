# pgwarden container image.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t pgwarden .
#   docker run -p 5432:5432 -v /etc/pgwarden:/etc/pgwarden:ro pgwarden
#
# The binary is static (CGO_ENABLED=0), so the final image is distroless
# "static": no shell, no package manager, no libc, running as uid 65532.

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
# distroless "nonroot" is 65532:65532; numeric so that runtimes enforcing
# runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# The default listen port. Binding it as non-root works because 5432 > 1024.
EXPOSE 5432
ENTRYPOINT ["/pgwarden"]
CMD ["serve", "--config", "/etc/pgwarden/pgwarden.yaml"]
