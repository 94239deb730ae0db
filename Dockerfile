# shadowzoo: `shadowzoo serve` (gateway workers + daemon) on a workspace volume.
# Not built or run in this repository's own checks (no Docker engine there): see ops/README.md.
#
#   docker build -t shadowzoo .
#   docker run -v /srv/shadowzoo:/workspace --env-file /etc/shadowzoo/shadowzoo.env \
#       -p 127.0.0.1:8800:8800 shadowzoo serve --workers 2 --host 0.0.0.0
# (--host 0.0.0.0 so the published port reaches the gateway; shadowzoo allows it only with
# client keys, gateway.client_keys_env.)
#
# compose.yaml runs it together with Prometheus and Grafana.

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The same layout as the systemd install: the source in /opt/shadowzoo, its venv in
# /opt/shadowzoo/.venv. Only what the package needs is copied (not .venv, tests, bench).
WORKDIR /opt/shadowzoo
COPY pyproject.toml README.md ./
COPY registry ./registry
COPY shadow ./shadow
COPY scorer ./scorer
COPY zoo ./zoo
COPY ops ./ops
COPY examples ./examples
# Editable, as `make install` does: `shadowzoo init` copies examples/demo from the source tree.
RUN python -m venv .venv \
    && .venv/bin/pip install --quiet -e .
ENV PATH=/opt/shadowzoo/.venv/bin:$PATH

# Run as an unprivileged user that owns only the workspace. A host directory mounted on
# /workspace must be writable by uid 10001.
# /state: a container's own state_dir when the workspace is mounted read-only (ops/compose).
RUN useradd --system --uid 10001 --user-group --home-dir /workspace --no-create-home shadowzoo \
    && mkdir /workspace /state \
    && chown shadowzoo:shadowzoo /workspace /state
USER shadowzoo

# The workspace: shadowzoo.yaml, zoo/, skills/ and state_dir (database, spool, routes.json).
WORKDIR /workspace
VOLUME /workspace

# 8800: gateway (OpenAI-compatible API and its /metrics); 8900: daemon admin API and /metrics.
EXPOSE 8800 8900

ENTRYPOINT ["shadowzoo"]
CMD ["serve", "--workers", "2"]
