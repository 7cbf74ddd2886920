# tokenproxy container image. The default target is the product: the proxy without the bundled
# platform emulator (emulator/, its own distribution), which a production image has no use for. The `demo`
# target adds it, for the compose demo (deploy/compose builds both).
#
#   docker build -t tokenproxy:0.1.0 .
#   docker build --target demo -t tokenproxy:demo .
#   docker run --rm -p 127.0.0.1:8080:8080 --env-file my.env tokenproxy:0.1.0
#
# No secret is baked in: credentials, the store key and the Redis URL come from the
# environment at run time (deploy/config/tokenproxy.toml reads them as ${VAR}); .dockerignore
# keeps var/, keys and .env files out of the build context. See deploy/README.md.

# -- build: install the package (no dev extras) into /install, the emulator into /emulator ------
FROM python:3.13-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy_addon ./proxy_addon
COPY emulator ./emulator
# The emulator is a distribution of its own: the product's files (and its RECORD) never hold
# it; only the demo stage adds it.
RUN pip install --prefix=/install . && pip install --no-deps --prefix=/emulator ./emulator

# -- runtime: what both images share -------------------------------------------------------------
FROM python:3.13-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it. The home directory is
# where mitmproxy keeps its state (~/.mitmproxy, created at start-up): writable volumes go
# there when the root filesystem is read-only.
RUN groupadd --system --gid 10001 tokenproxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/tokenproxy --create-home \
      --shell /usr/sbin/nologin tokenproxy
COPY --from=build /install /usr/local
# Default config: every credential in it is a ${VAR}; compose and Kubernetes mount their own.
COPY deploy/config/tokenproxy.toml /etc/tokenproxy/tokenproxy.toml
WORKDIR /home/tokenproxy
USER 10001:10001

# 8080: the proxy ([proxy] listen); 9464: /metrics /healthz /readyz /status ([proxy] metrics_listen)
EXPOSE 8080 9464

# curl is not in the slim image: Python's urllib, ignoring any *_proxy variables.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:9464/healthz', timeout=3); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["tokenproxy"]
# one process per container (one metrics port to scrape): scale with replicas
CMD ["run", "--config", "/etc/tokenproxy/tokenproxy.toml", "--workers", "1"]

# -- demo: the runtime plus the bundled emulator (compose's emulator service) --------------------
FROM runtime AS demo
COPY --from=build /emulator /usr/local

# -- production (default, last): the runtime as it is, no emulator -------------------------------
FROM runtime AS production
