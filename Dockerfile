# syntax=docker/dockerfile:1
# One image for both binaries:
#   agent:  node packages/agent/bin/edgemesh-agent.js --config /etc/edgemesh/config/agent.yaml   (root, NET_ADMIN/NET_RAW)
#   server: node packages/server/bin/edgemesh-server.js --config /etc/edgemesh/config/server.yaml (any user)
# The TypeScript sources run as they are through Node 24's type stripping: there is no build step.
ARG NODE_IMAGE=node:24-slim

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
# --omit=dev drops typescript, @types/*, ajv and the `node` devDependency (the image has its own Node 24).
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force
COPY packages/ packages/
# npm workspaces link packages/* as node_modules/@edgemesh/* (symlinks to ../../packages/*). Node resolves symlinks to
# real paths by default (no --preserve-symlinks), so `@edgemesh/common/config` loads /app/packages/common/src/config.ts:
# a path outside node_modules, where type stripping is allowed (Node refuses to strip types under node_modules).
# Fail the build here if that ever stops being true:
RUN node packages/agent/bin/edgemesh-agent.js --version \
 && node packages/server/bin/edgemesh-server.js --version

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
