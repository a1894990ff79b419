{{/* Names ------------------------------------------------------------------------------ */}}
{{- define "llmsvc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmsvc.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's object name: <fullname>-<component>. Args: root, component. */}}
{{- define "llmsvc.componentName" -}}
{{- printf "%s-%s" (include "llmsvc.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A Kubernetes-safe form of a model name. */}}
{{- define "llmsvc.modelSlug" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (lower .) "-" | trunc 30 | trimAll "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------- */}}
{{/* Args: root, component. */}}
{{- define "llmsvc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmsvc.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "llmsvc.labels" -}}
{{ include "llmsvc.selectorLabels" . }}
app.kubernetes.io/part-of: llmsvc
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}
{{/* Args: root, variant (slim, workerCpu, workerCuda, trainerCpu, trainerCuda). */}}
{{- define "llmsvc.image" -}}
{{- $img := .root.Values.image }}
{{- printf "%s/%s:%s" $img.registry (index $img.names .variant) (default .root.Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "llmsvc.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Security --------------------------------------------------------------------------- */}}
{{- define "llmsvc.podSecurityContext" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Args: root, readOnly (optional bool, default true). */}}
{{- define "llmsvc.containerSecurityContext" -}}
{{- $ctx := deepCopy .root.Values.containerSecurityContext }}
{{- if hasKey . "readOnly" }}
{{- $_ := set $ctx "readOnlyRootFilesystem" .readOnly }}
{{- end }}
securityContext:
  {{- toYaml $ctx | nindent 2 }}
{{- end }}

{{/* Environment ------------------------------------------------------------------------ */}}
{{/* Args: root, prefix (e.g. LLMSVC_AUTH), metrics (bool). */}}
{{- define "llmsvc.commonEnv" -}}
- name: {{ .prefix }}_LOG_LEVEL
  value: {{ .root.Values.logLevel | quote }}
- name: {{ .prefix }}_LOG_FORMAT
  value: {{ .root.Values.logFormat | quote }}
{{- if .metrics }}
- name: {{ .prefix }}_METRICS_PORT
  value: {{ .root.Values.metrics.port | quote }}
{{- end }}
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: HOME
  value: /tmp
- name: XDG_CACHE_HOME
  value: /cache
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{- define "llmsvc.databaseSecretName" -}}
{{- if .Values.postgresql.enabled }}{{ include "llmsvc.componentName" (dict "root" . "component" "postgresql") }}{{ else }}{{ .Values.postgresql.external.existingSecret }}{{ end }}
{{- end }}

{{- define "llmsvc.redisSecretName" -}}
{{- if .Values.redis.enabled }}{{ include "llmsvc.componentName" (dict "root" . "component" "redis") }}{{ else }}{{ .Values.redis.external.existingSecret }}{{ end }}
{{- end }}

{{- define "llmsvc.databaseEnv" -}}
- name: LLMSVC_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llmsvc.databaseSecretName" . }}
      key: {{ if .Values.postgresql.enabled }}url{{ else }}{{ .Values.postgresql.external.urlKey }}{{ end }}
{{- end }}

{{- define "llmsvc.redisEnv" -}}
- name: LLMSVC_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "llmsvc.redisSecretName" . }}
      key: {{ if .Values.redis.enabled }}url{{ else }}{{ .Values.redis.external.urlKey }}{{ end }}
{{- end }}

{{/* gRPC address of a component's Service. Args: root, component, port. */}}
{{- define "llmsvc.addr" -}}
{{- printf "%s:%v" (include "llmsvc.componentName" .) .port }}
{{- end }}

{{/* Volumes ---------------------------------------------------------------------------- */}}
{{/* Writable scratch for a read-only root filesystem: /tmp and /cache. */}}
{{- define "llmsvc.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
- name: cache
  emptyDir:
    sizeLimit: 4Gi
{{- end }}

{{- define "llmsvc.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: /cache
{{- end }}

{{- define "llmsvc.modelStoreClaim" -}}
{{- if .Values.modelStore.pvc.existingClaim }}{{ .Values.modelStore.pvc.existingClaim }}{{ else }}{{ include "llmsvc.componentName" (dict "root" . "component" "models") }}{{ end }}
{{- end }}

{{/* Termination: preStop sleep, then the service's own drain, then a margin for exit. Args: root, drain. */}}
{{- define "llmsvc.termination" -}}
terminationGracePeriodSeconds: {{ add .root.Values.preStopSleepSeconds .drain 5 }}
{{- end }}

{{- define "llmsvc.preStop" -}}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.preStopSleepSeconds }}"]
{{- end }}

{{/* Model store ------------------------------------------------------------------------ */}}
{{/* The store as the services address it: a mounted folder, or s3://bucket/prefix (fsspec). */}}
{{- define "llmsvc.modelStoreURL" -}}
{{- if eq .Values.modelStore.type "s3" }}{{ printf "s3://%s/%s" .Values.modelStore.s3.bucket .Values.modelStore.s3.prefix | trimSuffix "/" }}{{ else }}{{ .Values.modelStore.mountPath }}{{ end }}
{{- end }}

{{/* Credentials and endpoint for S3-compatible storage (AWS SDK and fsspec/s3fs names). */}}
{{- define "llmsvc.s3Env" -}}
{{- $s3 := .Values.modelStore.s3 }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $s3.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_DEFAULT_REGION
  value: {{ $s3.region | quote }}
{{- with $s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* An egress rule to CIDRs on some ports; no CIDRs: any address on those ports. */}}
{{- define "llmsvc.cidrEgress" -}}
- ports:
    {{- range .ports }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with .cidrs }}
  to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}

{{/* Internal auth ---------------------------------------------------------------------- */}}
{{- define "llmsvc.internalSecretName" -}}
{{- .Values.internalAuth.existingSecret | default (include "llmsvc.componentName" (dict "root" . "component" "internal")) }}
{{- end }}

{{- define "llmsvc.internalSecretEnv" -}}
- name: LLMSVC_INTERNAL_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "llmsvc.internalSecretName" . }}
      key: secret
{{- end }}

{{/* The labels every training pod carries (services/trainer/runners/k8s_objects.py: labels). */}}
{{- define "llmsvc.trainingPodLabels" -}}
app.kubernetes.io/name: llmsvc-train
app.kubernetes.io/part-of: llmsvc
{{- end }}
