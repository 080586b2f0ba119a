# The onesignin command: `serve`, `relay`, `worker`, `migrate`, and the operator commands.
#   docker build -t onesignin .                    (the hub image; the default target)
#   docker build -t onesignin-demo --target demo . (adds what `onesignin demo` needs)

FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY identity ./identity
COPY sync ./sync
COPY schemas ./schemas
COPY demo ./demo
# With the time zone database (slim images may lack one; zoneinfo claims are checked against it).
RUN pip install . tzdata && rm -rf /src

RUN useradd --system --user-group --uid 10001 --home-dir /var/lib/onesignin --create-home onesignin
USER onesignin
WORKDIR /var/lib/onesignin
ENV ONESIGNIN_DATA_DIR=/var/lib/onesignin

EXPOSE 8000
ENTRYPOINT ["onesignin"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]


# `onesignin demo`: the member services use authlib's OAuth client, which needs httpx2.
FROM base AS demo
USER root
RUN pip install "httpx2>=2.16"
USER onesignin
EXPOSE 8100 8101 8102
CMD ["demo", "--host", "0.0.0.0", "--port", "8100"]


FROM base AS hub
