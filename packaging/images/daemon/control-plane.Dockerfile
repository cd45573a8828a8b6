# airlock-control-plane: `control-plane serve` as uid 10001.
# Built by packaging/images/build-daemon-images.sh (docs/images.md).
ARG BASE
FROM ${BASE}
COPY rootfs/ /
USER 10001:10001
# CA, identity.db, sessions.sqlite3, catalog.sqlite3, admin.sock.
VOLUME ["/var/lib/airlock"]
# 7443 tunnel (QUIC on UDP, TLS/TCP fallback), 7444 enrollment, 8080 API, 9464 ops.
EXPOSE 7443/udp 7443/tcp 7444/tcp 8080/tcp 9464/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/lib/airlock/healthcheck", "9464"]
ENTRYPOINT ["/usr/bin/control-plane"]
CMD ["--config", "/etc/airlock/control-plane.toml", "serve"]
