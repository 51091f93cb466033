# syntax=docker/dockerfile:1
# Node.js 24, the current LTS line. A pinned major rather than `lts`, so that a
# rebuild never moves to the next major by itself; several production
# dependencies already require Node.js 22 or later. Override with
# --build-arg NODE_VERSION=...
ARG NODE_VERSION=24

# Production dependencies only, exactly as the lock file has them. A stage of
# its own, so that the compiler and the test tools never reach the image.
FROM node:${NODE_VERSION}-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev --no-audit --no-fund

# Compile: every dependency (TypeScript, type packages), then tsc into dist/.
FROM node:${NODE_VERSION}-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
# Every top-level module (app.ts, server.ts, ...) by pattern, so that a new
# entry point needs no change here; tests and benchmarks stay out.
COPY tsconfig.json tsconfig.build.json *.ts ./
COPY plugins ./plugins
COPY grants ./grants
COPY client-auth ./client-auth
COPY tokens ./tokens
COPY storage ./storage
COPY routes ./routes
COPY schemas ./schemas
COPY workers ./workers
COPY cli ./cli
COPY signing-keys ./signing-keys
COPY dpop ./dpop
RUN npm run build

FROM node:${NODE_VERSION}-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Owned by root and only readable by the service's user: the process cannot
# rewrite its own code or dependencies.
COPY --from=deps /app/node_modules ./node_modules
# package.json makes dist/*.js ES modules ("type": "module") and marks the
# project folder: the migrations are looked up beside it, in /app/migrations.
COPY package.json ./
# dist/workers/bcrypt.js is loaded at run time beside dist/plugins/, and
# dist/storage/lua/*.lua (copied there by npm run build) beside dist/storage/.
COPY --from=build /app/dist ./dist
COPY migrations ./migrations
# Without DATABASE_URL the service runs embedded (one process) and keeps its
# database and generated key in DATA_DIR: a folder the node user owns, meant
# to be a volume (docker run -v session-data:/data ...). docker-compose.yml
# sets DATABASE_URL and REDIS_URL, and the folder stays empty.
ENV DATA_DIR=/data
RUN mkdir -p /data && chown node:node /data && chmod 700 /data
VOLUME ["/data"]
USER node
# The admin listener (metrics, readiness, liveness, docs, admin API) listens
# on every interface of the container so that probes and scrapers reach it;
# publish its port to the operators' network only (compose: 127.0.0.1).
ENV ADMIN_HOST=0.0.0.0
EXPOSE 8080 9090
# /live depends on nothing but the process: an outage of PostgreSQL or Redis
# must not get every container replaced (/ready reports those). No curl in a
# slim image: node's own fetch asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.ADMIN_PORT || 9090) + '/live').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# Exec form: node is the process that receives SIGTERM (no shell between), and
# drains before it exits: SHUTDOWN_DELAY (5 s) of service while load balancers
# stop sending, then every request received is answered: about 6 s in all, at
# most SHUTDOWN_DELAY + 10 s, which `docker stop --time` should exceed.
CMD ["node", "dist/server.js"]
