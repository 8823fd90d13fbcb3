# egressgw container image: a static binary on distroless, run as non-root.
#
#   docker build --build-arg VERSION=1.2.3 -t egressgw:1.2.3 .
#   docker run --rm -p 3128:3128 -v "$PWD/config:/etc/egressgw:ro" \
#     -v egressgw-state:/var/lib/egressgw egressgw:1.2.3
#
# The config directory (gateway.yaml, tenants/, connectors/) is mounted at
# /etc/egressgw; it must be readable by uid 65532. Access requests and
# grants (the file state backend) need a writable directory that outlives
# the container: gateway.yaml says `state: { dir: /var/lib/egressgw }`, the
# volume below, owned by uid 65532. See docs/operators.md.
# e2e/docker_test.go builds the binary with this file's own build line and
# runs it as this image would, since CI has no Docker engine.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, so editing the source does not invalidate their layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/egressgw ./cmd/egressgw
# The state directory, empty, for the final stage (which has no shell).
RUN mkdir -p /out/state

# distroless/static: CA certificates, /etc/passwd with the nonroot user,
# tzdata; no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/egressgw /egressgw
COPY --from=build --chown=65532:65532 /out/state /var/lib/egressgw
VOLUME ["/var/lib/egressgw"]
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 3128: the proxy. 9128: the admin listener (health, metrics, explain);
# gateway.yaml's default admin_listen is 127.0.0.1:9128, which the health
# check below reaches from inside the container; set "0.0.0.0:9128" to
# scrape metrics or probe from outside.
EXPOSE 3128 9128
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/egressgw", "healthcheck"]
ENTRYPOINT ["/egressgw"]
CMD ["serve", "--config", "/etc/egressgw"]
