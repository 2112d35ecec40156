# syntax=docker/dockerfile:1
#
# ghcr.io/palisade-net/palisade: palisade-agent and palisade-nodeproxy in
# one image (manifests/ runs both from it).
#
#   docker build -t ghcr.io/palisade-net/palisade:<tag> .
#
# The agent programs the redirect rules in pod network namespaces with
# iptables-restore/iptables-save (and ip6tables-*, whichever backend the
# image's alternatives select, nft by default) and lists nft rulesets; the
# agent's probes and the CNI install script use curl, jq and sh. Hence a
# small Debian rather than distroless.

FROM golang:1.26-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/agent ./cmd/nodeproxy \
 && mv /out/agent /out/palisade-agent \
 && mv /out/nodeproxy /out/palisade-nodeproxy

FROM debian:trixie-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables curl jq ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/palisade-agent /out/palisade-nodeproxy /usr/local/bin/
# The daemons run as root with only the capabilities the manifests grant.
ENTRYPOINT ["/usr/local/bin/palisade-agent"]
