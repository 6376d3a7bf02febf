{{/*
Names. With the release name "bpftap" every object is named as in deploy/kustomize.
*/}}
{{- define "bpftap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bpftap.fullname" -}}
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

{{- define "bpftap.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels. The agent and the collector share name and instance; app.kubernetes.io/component
tells them apart, so a selector never picks the other's pods.
*/}}
{{- define "bpftap.labels" -}}
helm.sh/chart: {{ include "bpftap.chart" . }}
{{ include "bpftap.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bpftap
{{- end }}

{{- define "bpftap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bpftap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bpftap.agentSelectorLabels" -}}
{{ include "bpftap.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "bpftap.collectorSelectorLabels" -}}
{{ include "bpftap.selectorLabels" . }}
app.kubernetes.io/component: collector
{{- end }}

{{- define "bpftap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bpftap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: the name of an existing service account (serviceAccount.create is false)" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "bpftap.configMapName" -}}
{{- .Values.existingConfigMap | default (printf "%s-config" (include "bpftap.fullname" .)) }}
{{- end }}

{{/* repository:tag, or repository@digest */}}
{{- define "bpftap.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}
