# tenant-proxy container image.
#
#   docker build -t tenant-proxy .
#   docker run --rm -p 8080:8080 -p 9394:9394 \
#     -e REGISTRY_DATABASE_URL=postgres://… \
#     -e TENANT_PROXY_DESCRIPTOR_KEYS_FILE=/run/secrets/descriptor.pem \
#     -v "$PWD/descriptor.pem:/run/secrets/descriptor.pem:ro" tenant-proxy
#
# Every RUN step is one plain command on purpose: test/dockerfile.test.ts replays the npm steps
# outside Docker (there is no Docker engine in CI) and starts the result, so the image's build is
# proven on every test run. Keep new steps replayable, or list them in that test's
# IMAGE_ONLY_COMMANDS with the reason they cannot run there.

# ---- build: compile TypeScript with the dev dependencies ---------------------------------------
FROM node:22-bookworm-slim AS build
WORKDIR /src
# Manifests first: the dependency layer is reused until package*.json change. clients/node is an
# npm workspace (the app-side verifier, @tenant-proxy/verify): npm ci needs its manifest, and
# `npm run build` builds it too.
COPY package.json package-lock.json ./
COPY clients/node/package.json ./clients/node/
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY clients/node/tsconfig.json ./clients/node/
COPY clients/node/src ./clients/node/src
COPY config ./config
COPY src ./src
COPY scripts ./scripts
RUN npm run build

# ---- runtime: production dependencies and the compiled output only ----------------------------
FROM node:22-bookworm-slim AS runtime
# tini as PID 1: forwards SIGTERM/SIGHUP to node and reaps zombies (the embedded registry's
# PostgreSQL children), which node as PID 1 would not do. Debian's package, no download.
RUN apt-get update && apt-get install -y --no-install-recommends tini && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production
WORKDIR /app
# The workspace's manifest only: the proxy never loads the verifier package.
COPY package.json package-lock.json ./
COPY clients/node/package.json ./clients/node/
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY --from=build /src/dist ./dist
# Data directory of the embedded registry (used only without REGISTRY_DATABASE_URL), writable by
# the unprivileged user; mount a volume here to keep it.
RUN install -d -o node -g node /app/data
# The image's own unprivileged user (uid 1000): the proxy needs no privilege, its ports are > 1024.
USER node
# Both listeners bind 0.0.0.0 by default (traffic.host, ops.host), as a container must.
EXPOSE 8080 9394
# Exec form with node itself: the slim image has no curl. Reads the same variables as the proxy
# for the port and path; 200 only while a registry snapshot is loaded and the process is not draining.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.TENANT_PROXY_TRAFFIC_PORT || '8080') + (process.env.TENANT_PROXY_TRAFFIC_HEALTH_PATH || '/up'), { signal: AbortSignal.timeout(4000) }).then((res) => process.exit(res.status === 200 ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "/app/dist/src/main.js"]
# Any other command works the same way: `docker run … tenant-proxy tenants list`.
CMD ["serve"]
