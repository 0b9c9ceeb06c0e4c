{{/* Chart name, truncated to the 63 characters a label value may have. */}}
{{- define "hector-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: RELEASE-CHART, or RELEASE when it already contains the chart name. */}}
{{- define "hector-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hector-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hector-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hector-operator.labels" -}}
{{ include "hector-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: hector
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hector-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hector-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "hector-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "hector-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "hector-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's own defaults (`hector-operator run --help`). A flag is passed only when its value
differs, so the default rendering runs the same command line as deploy/.
*/}}
{{- define "hector-operator.args" -}}
- run
- --launcher-image={{ default (include "hector-operator.image" .) .Values.launcher.image }}
- --log-format={{ .Values.logging.format }}
{{- if ne .Values.logging.level "info" }}
- --log-level={{ .Values.logging.level }}
{{- end }}
{{- with .Values.watchNamespaces }}
- --namespaces={{ join "," . }}
{{- end }}
{{- if ne .Values.endpointsConfigMap "hector-plugins" }}
- --endpoints-configmap={{ .Values.endpointsConfigMap }}
{{- end }}
{{- if ne .Values.launcher.pullPolicy "IfNotPresent" }}
- --launcher-pull-policy={{ .Values.launcher.pullPolicy }}
{{- end }}
{{- if ne (int .Values.metrics.port) 8080 }}
- --metrics-addr=0.0.0.0:{{ .Values.metrics.port }}
{{- end }}
{{- if ne (int .Values.health.port) 8081 }}
- --health-addr=0.0.0.0:{{ .Values.health.port }}
{{- end }}
{{- if not .Values.leaderElection.enabled }}
- --leader-elect=false
{{- else }}
{{- if ne .Values.leaderElection.leaseName "hector-operator" }}
- --lease-name={{ .Values.leaderElection.leaseName }}
{{- end }}
{{- if ne (int .Values.leaderElection.leaseDurationSeconds) 15 }}
- --lease-duration={{ .Values.leaderElection.leaseDurationSeconds }}
{{- end }}
{{- end }}
{{- /* Plugin NetworkPolicies let in the Pods with these labels: the selector labels. */}}
{{- $podLabels := printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s" (include "hector-operator.name" .) .Release.Name }}
{{- if ne $podLabels "app.kubernetes.io/name=hector-operator,app.kubernetes.io/instance=hector-operator" }}
- --operator-pod-labels={{ $podLabels }}
{{- end }}
{{- with .Values.extraArgs }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* What the operator does in a namespace it watches: the same rules cluster-wide or per namespace. */}}
{{- define "hector-operator.rules" -}}
# The resources it reconciles; it writes only their status.
- apiGroups: ["hector.dev"]
  resources: ["hectorplugins"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["hector.dev"]
  resources: ["hectorplugins/status"]
  verbs: ["patch"]
# What it runs a plugin with. `get` reads a name before creating it, so an object the
# operator did not create is never taken over.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The owner chain Pod -> ReplicaSet -> Deployment decides which Pods are endpoints.
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["list", "watch"]
# Plugin Services.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Plugin config ConfigMaps and the endpoints ConfigMap (replaced, conditioned on its
# resourceVersion, when it is published: cheaper for the API server than an apply).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Plugin NetworkPolicies: only allowed callers and the operator reach a plugin's port.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# No permission on Secrets at all: secret values reach plugin Pods through the kubelet
# only. A missing Secret or key is read from the kubelet's FailedMount Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list", "watch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* An alert's `for`, labels and annotations. Takes name, alert (its values), summary,
description, runbookUrl and alertLabels. */}}
{{- define "hector-operator.alertMeta" -}}
for: {{ index .alert "for" }}
labels:
  severity: {{ .alert.severity | quote }}
  {{- range $k, $v := .alertLabels }}
  {{ $k }}: {{ $v | quote }}
  {{- end }}
annotations:
  summary: {{ .summary | quote }}
  description: {{ .description | quote }}
  runbook_url: {{ printf "%s#%s" .runbookUrl (lower .name) | quote }}
{{- end }}
