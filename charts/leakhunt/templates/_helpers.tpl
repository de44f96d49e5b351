{{/*
Chart name, or nameOverride.
*/}}
{{- define "leakhunt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every resource name: fullnameOverride, else the release name (when it already contains the chart
name), else `<release>-<chart>`. Truncated so that the longest suffix ("-analyzer") still fits in 63.
*/}}
{{- define "leakhunt.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`helm.sh/chart` label value.
*/}}
{{- define "leakhunt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "leakhunt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "leakhunt.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Standard labels of one component. Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "leakhunt.labels" -}}
helm.sh/chart: {{ include "leakhunt.chart" .ctx }}
{{ include "leakhunt.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: leakhunt
{{- end }}

{{/*
Name of a component's resources and ServiceAccount: `<fullname>-<component>`.
Call with (dict "ctx" $ "component" "operator").
*/}}
{{- define "leakhunt.componentName" -}}
{{- printf "%s-%s" (include "leakhunt.fullname" .ctx) .component }}
{{- end }}

{{/*
The image of every component and of the analyzer Jobs.
*/}}
{{- define "leakhunt.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
Listen address of a metrics port: all interfaces, so the kubelet's probes and Prometheus reach it.
*/}}
{{- define "leakhunt.listenAddr" -}}
{{- printf "0.0.0.0:%d" (int .) }}
{{- end }}

{{/*
Egress port of an alert URL: its explicit port, else 443 for https and 80 for http.
*/}}
{{- define "leakhunt.urlPort" -}}
{{- $u := urlParse . }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- if $port }}
{{- $port }}
{{- else if eq $u.scheme "http" }}
{{- 80 }}
{{- else }}
{{- 443 }}
{{- end }}
{{- end }}

{{/*
Values checks the schema cannot express; rendered once, from the operator Deployment.
*/}}
{{- define "leakhunt.validate" -}}
{{- $t := .Values.agent.thresholds }}
{{- if ge (int $t.baseline) (int $t.nearLimit) }}
{{- fail (printf "agent.thresholds.baseline (%d) must be below agent.thresholds.nearLimit (%d)" (int $t.baseline) (int $t.nearLimit)) }}
{{- end }}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection: true (two active operators would race)" }}
{{- end }}
{{- end }}
