{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "edgemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; object names add a suffix of at most 7 characters (-server, -agent, -token). */}}
{{- define "edgemesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "edgemesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "edgemesh.labels" -}}
helm.sh/chart: {{ include "edgemesh.chart" . }}
{{ include "edgemesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edgemesh
{{- end }}

{{- define "edgemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "edgemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-agent" (include "edgemesh.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "edgemesh.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the cluster token, and its key. */}}
{{- define "edgemesh.tokenSecretName" -}}
{{- if .Values.token.existingSecret }}
{{- .Values.token.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "edgemesh.fullname" .) }}
{{- end }}
{{- end }}

{{- define "edgemesh.tokenSecretKey" -}}
{{- if .Values.token.existingSecret }}
{{- .Values.token.existingSecretKey }}
{{- else }}
{{- "token" }}
{{- end }}
{{- end }}

{{/* The Secret holding the cluster CA (keys ca.crt, ca.key). */}}
{{- define "edgemesh.caSecretName" -}}
{{- default (printf "%s-ca" (include "edgemesh.fullname" .)) .Values.ca.existingSecret }}
{{- end }}

{{- define "edgemesh.adminSecretName" -}}
{{- default (printf "%s-admin" (include "edgemesh.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{/*
The server's config file: server.config verbatim, except that an empty enrollment.serviceAccounts is filled with the
agent's ServiceAccount of this release when the cluster source is kubernetes. Fails when bootstrap-token enrollment
is on without persistence (its pins would be lost on every pod restart: a racing redialler could then take a name).
*/}}
{{- define "edgemesh.server.config" -}}
{{- $cfg := deepCopy .Values.server.config }}
{{- $enr := default (dict) (get $cfg "enrollment") }}
{{- if and (not (get $enr "serviceAccounts")) (eq (toString (dig "cluster" "source" "none" $cfg)) "kubernetes") .Values.agent.enabled }}
{{- $_ := set $enr "serviceAccounts" (list (printf "%s/%s" .Release.Namespace (include "edgemesh.serviceAccountName" .))) }}
{{- $_ := set $cfg "enrollment" $enr }}
{{- end }}
{{- if not (get $cfg "mesh") }}
{{- /* Replicas find each other through the headless Service (server-mesh-service.yaml). */ -}}
{{- $_ := set $cfg "mesh" (dict "dns" (printf "%s-server-mesh.%s.svc" (include "edgemesh.fullname" .) .Release.Namespace)) }}
{{- end }}
{{- if and (ne (toString (dig "bootstrapToken" true $enr)) "false") (not .Values.server.persistence.enabled) }}
{{- fail "edgemesh: server.config.enrollment.bootstrapToken needs server.persistence.enabled=true (the pins it makes must survive server restarts); or use Kubernetes enrollment and join tokens" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Port of a HOST:PORT or [V6]:PORT string (the part after the last colon). */}}
{{- define "edgemesh.port" -}}
{{- splitList ":" . | last }}
{{- end }}

{{/* Host of a HOST:PORT or [V6]:PORT string, without brackets. */}}
{{- define "edgemesh.host" -}}
{{- $port := include "edgemesh.port" . }}
{{- trimSuffix (printf ":%s" $port) . | trimPrefix "[" | trimSuffix "]" }}
{{- end }}

{{/* The kubelet probes the agent's admin listener: a wildcard host means "probe the pod (= node) IP". */}}
{{- define "edgemesh.agent.adminHost" -}}
{{- $h := include "edgemesh.host" (dig "admin" "listen" "127.0.0.1:10560" .Values.agent.config) }}
{{- if not (has $h (list "" "0.0.0.0" "::")) }}
{{- $h }}
{{- end }}
{{- end }}

{{- define "edgemesh.agent.adminPort" -}}
{{- include "edgemesh.port" (dig "admin" "listen" "127.0.0.1:10560" .Values.agent.config) }}
{{- end }}

{{- define "edgemesh.server.port" -}}
{{- include "edgemesh.port" (dig "listen" "0.0.0.0:20004" .Values.server.config) }}
{{- end }}

{{- define "edgemesh.server.stunAltPort" -}}
{{- dig "stunAltPort" 20005 .Values.server.config }}
{{- end }}

{{- define "edgemesh.server.adminPort" -}}
{{- include "edgemesh.port" (dig "admin" "listen" "0.0.0.0:10561" .Values.server.config) }}
{{- end }}

{{/* HOST:PORT agents dial, from server.advertiseAddress (empty when it is not set). */}}
{{- define "edgemesh.server.advertise" -}}
{{- $a := .Values.server.advertiseAddress }}
{{- if $a }}
{{- if or (regexMatch "^\\[[^\\]]+\\]:[0-9]+$" $a) (regexMatch "^[^:]+:[0-9]+$" $a) }}
{{- $a }}
{{- else if contains ":" $a }}
{{- printf "[%s]:%s" (trimPrefix "[" $a | trimSuffix "]") (include "edgemesh.server.port" .) }}
{{- else }}
{{- printf "%s:%s" $a (include "edgemesh.server.port" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The agent's config file: agent.config verbatim, except that an empty tunnel.servers is filled from
server.advertiseAddress. Fails when the tunnel is enabled and no server address is known.
*/}}
{{- define "edgemesh.agent.config" -}}
{{- $cfg := deepCopy .Values.agent.config }}
{{- $tunnel := default (dict) (get $cfg "tunnel") }}
{{- $servers := default (list) (get $tunnel "servers") }}
{{- $advertise := include "edgemesh.server.advertise" . }}
{{- if and (not $servers) $advertise }}
{{- $_ := set $tunnel "servers" (list $advertise) }}
{{- $_ := set $cfg "tunnel" $tunnel }}
{{- $servers = list $advertise }}
{{- end }}
{{- if and (not $servers) (ne (toString (dig "enabled" true $tunnel)) "false") }}
{{- fail "edgemesh: set server.advertiseAddress (the public address agents reach the server at) or agent.config.tunnel.servers; with a LoadBalancer whose address is not known yet, install with agent.enabled=false first, then upgrade" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The Secret volume both workloads mount the token from (group-readable for the non-root server). */}}
{{- define "edgemesh.tokenVolume" -}}
- name: token
  secret:
    secretName: {{ include "edgemesh.tokenSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "edgemesh.tokenSecretKey" . }}
        path: token
{{- end }}

{{/* EDGEMESH_TOKEN from the Secret, when token.delivery is env. */}}
{{- define "edgemesh.tokenEnv" -}}
{{- if eq .Values.token.delivery "env" }}
- name: EDGEMESH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "edgemesh.tokenSecretName" . }}
      key: {{ include "edgemesh.tokenSecretKey" . }}
{{- end }}
{{- end }}
