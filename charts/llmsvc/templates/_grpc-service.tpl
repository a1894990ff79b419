{{/*
A gRPC service (auth, router, trainer, eval): Deployment + ClusterIP Service.
Probes use the kubelet's native gRPC client against grpc.health.v1 (the overall "" status,
which each service flips to NOT_SERVING when it starts draining).

Args (dict):
  root            the chart root context
  component       auth | router | trainer | eval
  values          the component's values block
  module          the Python module that runs it (services.<svc>.main)
  env             extra env entries, a YAML list rendered as a string
  serviceAccount  ServiceAccount name ("" for the component's own, created in serviceaccounts.yaml)
  automountToken  bool: mount the API token (only router and trainer talk to the Kubernetes API)
  volumes / mounts  extra volumes and mounts, YAML strings
*/}}
{{- define "llmsvc.grpcDeployment" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $name := include "llmsvc.componentName" . }}
{{- $prefix := printf "LLMSVC_%s" (upper .component) }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "llmsvc.labels" . | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "llmsvc.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "llmsvc.labels" . | nindent 8 }}
      {{- with $v.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      serviceAccountName: {{ $name }}
      automountServiceAccountToken: {{ .automountToken }}
      {{- include "llmsvc.imagePullSecrets" $root | nindent 6 }}
      {{- include "llmsvc.podSecurityContext" $root | nindent 6 }}
      {{- include "llmsvc.termination" (dict "root" $root "drain" $v.drainSeconds) | nindent 6 }}
      containers:
        - name: {{ .component }}
          image: {{ include "llmsvc.image" (dict "root" $root "variant" "slim") }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["python", "-m", "{{ .module }}"]
          ports:
            - name: grpc
              containerPort: {{ $v.port }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
          env:
            - name: {{ $prefix }}_HOST
              value: "0.0.0.0"
            - name: {{ $prefix }}_PORT
              value: {{ $v.port | quote }}
            - name: {{ $prefix }}_GRACE_S
              value: {{ $v.drainSeconds | quote }}
            {{- include "llmsvc.internalSecretEnv" $root | nindent 12 }}
            {{- include "llmsvc.commonEnv" (dict "root" $root "prefix" $prefix "metrics" true) | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
            {{- with $v.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 5
            failureThreshold: 24
          readinessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 5
            failureThreshold: 2
          livenessProbe:
            grpc:
              port: {{ $v.port }}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          {{- include "llmsvc.preStop" $root | nindent 10 }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          {{- include "llmsvc.containerSecurityContext" (dict "root" $root) | nindent 10 }}
          volumeMounts:
            {{- include "llmsvc.scratchMounts" $root | nindent 12 }}
            {{- with .mounts }}
            {{- . | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "llmsvc.scratchVolumes" $root | nindent 8 }}
        {{- with .volumes }}
        {{- . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "llmsvc.labels" . | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "llmsvc.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $v.port }}
      targetPort: grpc
      appProtocol: grpc
    - name: metrics
      port: {{ $root.Values.metrics.port }}
      targetPort: metrics
{{- end }}

{{/* PodDisruptionBudget. Args: root, component, values, selector (optional extra labels). */}}
{{- define "llmsvc.pdb" -}}
{{- if .values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name | default (include "llmsvc.componentName" .) }}
  labels:
    {{- include "llmsvc.labels" . | nindent 4 }}
spec:
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "llmsvc.selectorLabels" . | nindent 6 }}
      {{- with .selector }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
{{- end }}
{{- end }}
