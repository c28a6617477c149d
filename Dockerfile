# dpx: one stateless instance of the service (gunicorn workers over SQLite in the data
# volume, or over a shared PostgreSQL given by DPX_DATABASE_URL).
#
#   docker build -t dpx .
#   docker run -p 8000:8000 -v dpx-data:/var/lib/dpx \
#     -v "$PWD/policies:/etc/dpx/policies:ro" \
#     -v "$PWD/keyring.json:/run/secrets/dpx-keyring:ro" dpx
#
# The keyring is a secret: mounted read-only, mode 0600, owned by uid 10001 (the dpx user).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# constraints.txt (scripts/lock) pins every distribution to the version the tests passed with.
COPY pyproject.toml README.md constraints.txt ./
COPY client ./client
COPY service ./service
# The service depends on the partner client in client/: installed together, from here.
RUN pip install --constraint constraints.txt ./client ".[postgres]"
COPY gunicorn.conf.py ./

RUN groupadd --system --gid 10001 dpx \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dpx --no-create-home dpx \
 && mkdir -p /var/lib/dpx /etc/dpx/policies \
 && chown 10001:10001 /var/lib/dpx

ENV DPX_ENV=production \
    DPX_DATA_DIR=/var/lib/dpx \
    DPX_KEYRING=/run/secrets/dpx-keyring \
    DPX_POLICY_DIR=/etc/dpx/policies \
    DPX_BIND=0.0.0.0:8000 \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/dpx/prometheus

# Numeric, so that the runtime (and a Kubernetes runAsNonRoot check) need not resolve a name.
USER 10001:10001
VOLUME ["/var/lib/dpx"]
EXPOSE 8000

# Ready means: database reachable with the current schema, keyring and policies loaded.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]

# With no arguments: bring the schema up to date, then serve. With arguments, run them
# instead (e.g. `docker run … dpx budget-report`), with the same settings.
ENTRYPOINT ["/bin/sh", "-c", "if [ \"$#\" -gt 0 ]; then exec \"$@\"; fi; dpx init && exec gunicorn --config /app/gunicorn.conf.py service.wsgi:app", "dpx-entrypoint"]
