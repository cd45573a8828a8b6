# airlock-sandbox-agent: `sandbox-agent run` as uid 10001, plus the static
# in-sandbox executor that its entrypoint installs onto a host path.
# Built by packaging/images/build-daemon-images.sh (docs/images.md).
#
# The agent drives the HOST's Docker Engine through /var/run/docker.sock:
# run it with `--group-add <gid of the socket>`. Access to that socket is
# root-equivalent on the host (docs/images.md, "The Docker socket").
ARG BASE
FROM ${BASE}
COPY rootfs/ /
USER 10001:10001
# Must be a bind mount of the host directory at the SAME path (the entrypoint
# copies the executor to /var/lib/airlock-agent/executor/, and the host's
# Docker Engine bind-mounts it from there into every sandbox).
VOLUME ["/var/lib/airlock-agent"]
EXPOSE 9465/tcp
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/usr/lib/airlock/healthcheck", "9465"]
ENTRYPOINT ["/usr/lib/airlock/sandbox-agent-entrypoint"]
CMD ["--config", "/etc/airlock/sandbox-agent.toml", "run"]
