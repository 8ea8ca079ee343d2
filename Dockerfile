# syntax=docker/dockerfile:1
# dgrelay: a static binary on a distroless, non-root base. No secret is ever
# baked in: the key comes at run time from the platform's secret store or
# Secret Manager.

# GO_VERSION is at least go.mod's go line (deploy_test.go holds them together).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Modules first, so a code change does not refetch them.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dgrelay .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dgrelay /dgrelay
# Numeric, as distroless's nonroot user is: Kubernetes' runAsNonRoot can
# check a number, not a name.
USER 65532:65532
# 8080: the WebSocket route and probes (PORT); 9091: /metrics (METRICS_PORT),
# on the container's loopback unless METRICS_HOST opens it (fly.toml does). A
# container run without authentication listens on its loopback too, out of
# reach of a published port, until LISTEN_HOST=0.0.0.0 says otherwise.
EXPOSE 8080 9091
ENTRYPOINT ["/dgrelay"]
