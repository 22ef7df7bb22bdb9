# syntax=docker/dockerfile:1
# One image for both binaries:
#   agent:  node packages/agent/bin/edgemesh-agent.js --config /etc/edgemesh/config/agent.yaml   (root, NET_ADMIN/NET_RAW)
#   server: node packages/server/bin/edgemesh-server.js --config /etc/edgemesh/config/server.yaml (any user)
# Both run the plain-JavaScript bundles in packages/*/dist (scripts/build.ts, esbuild), never TypeScript: NODE_ENV=production
# makes the bins pick them, and size V8 for the container's memory limit (packages/common/bin/entry.js).
ARG NODE_IMAGE=node:24-slim

# ---- build: every dependency (esbuild), then the bundles --------------------------------------------------------
FROM ${NODE_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY scripts/ scripts/
COPY packages/ packages/
# `prepare` (scripts/build.ts) builds packages/agent/dist and packages/server/dist.
RUN npm ci --no-audit --no-fund && test -f packages/agent/dist/edgemesh-agent.cjs && test -f packages/server/dist/edgemesh-server.cjs

# ---- dependencies: production only -------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS deps
# Compilers only for the case a native dependency (sodium-native, udx-native) ships no prebuilt binary for the target
# platform; they stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
# Manifests first, so the dependency layer is rebuilt only when they change.
COPY package.json package-lock.json ./
COPY packages/common/package.json packages/common/
COPY packages/agent/package.json packages/agent/
COPY packages/server/package.json packages/server/
COPY packages/lab/package.json packages/lab/
# --omit=dev drops typescript, esbuild, @types/*, ajv and the `node` devDependency (the image has its own Node 24);
# `prepare` then finds no esbuild and builds nothing (the bundles come from the build stage).
COPY scripts/build.ts scripts/
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY packages/ packages/
COPY --from=build /app/packages/agent/dist packages/agent/dist
COPY --from=build /app/packages/server/dist packages/server/dist
# The bundles run with type stripping turned off, so the build fails here if anything would still load TypeScript.
RUN NODE_ENV=production NODE_OPTIONS=--no-experimental-strip-types node packages/agent/bin/edgemesh-agent.js --version \
 && NODE_ENV=production NODE_OPTIONS=--no-experimental-strip-types node packages/server/bin/edgemesh-server.js --version

# ---- runtime -------------------------------------------------------------------------------------------------------
FROM ${NODE_IMAGE}
# iptables (both the legacy and the nft back end), iproute2 for the dummy interface, conntrack to flush stale entries.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables iproute2 conntrack ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && for mode in legacy nft; do \
      dir=/opt/edgemesh/iptables-$mode; mkdir -p "$dir"; \
      for tool in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do \
        ln -s "/usr/sbin/xtables-$mode-multi" "$dir/$tool"; \
      done; \
    done
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app /app
COPY docker/entrypoint.sh /usr/local/bin/edgemesh-entrypoint
# The server runs as this user; the chart runs the agent as root (iptables) with only NET_ADMIN/NET_RAW/NET_BIND_SERVICE.
USER 1000:1000
EXPOSE 20004/tcp 20004/udp 20005/udp 10561/tcp
ENTRYPOINT ["/usr/local/bin/edgemesh-entrypoint"]
CMD ["node", "packages/agent/bin/edgemesh-agent.js", "--help"]
