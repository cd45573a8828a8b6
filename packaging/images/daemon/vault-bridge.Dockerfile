# airlock-vault-bridge: `vault-bridge serve` as uid 10001 (the sandbox-agent's uid).
# Built by packaging/images/build-daemon-images.sh (docs/images.md).
ARG BASE
FROM ${BASE}
COPY rootfs/ /
USER 10001:10001
# Both must be bind mounts of host directories at the SAME path, not named
# volumes: the sandbox-agent asks the host's Docker Engine to mount
# /run/airlock-vault-bridge/egress/<sandbox> and
# /var/lib/airlock-vault-bridge/egress-ca/ca.crt into each sandbox, and the
# engine resolves those paths on the host.
VOLUME ["/var/lib/airlock-vault-bridge", "/run/airlock-vault-bridge"]
EXPOSE 9466/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/lib/airlock/healthcheck", "9466"]
ENTRYPOINT ["/usr/bin/vault-bridge"]
CMD ["--config", "/etc/airlock/vault-bridge.toml", "serve"]
