{{- define "vaegan.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vaegan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vaegan.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vaegan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vaegan
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "vaegan.selector" (list . "gateway") */}}
{{- define "vaegan.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "vaegan.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vaegan.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{ printf "%s/%s@%s" .image.registry .image.repository .image.digest }}
{{- else -}}
{{ printf "%s/%s:%s" .image.registry .image.repository $tag }}
{{- end -}}
{{- end -}}

{{- define "vaegan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vaegan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "vaegan.modelRepository" -}}
{{- if eq .Values.modelRepository.source "objectStore" -}}
{{- required "modelRepository.objectStore.url is required with source objectStore" .Values.modelRepository.objectStore.url -}}
{{- else -}}
/models
{{- end -}}
{{- end -}}

{{/* Triton's container, in its own Deployment or (colocated.enabled) beside the gateway:
include "vaegan.tritonContainer" (list . "") or (list . "triton-"), the prefix of its port
and /tmp volume names, which must not clash with the gateway's in one pod. */}}
{{- define "vaegan.tritonContainer" -}}
{{- $root := index . 0 -}}
{{- $ports := index . 1 -}}
- name: triton
  image: {{ include "vaegan.image" (dict "root" $root "image" $root.Values.triton.image) }}
  imagePullPolicy: {{ $root.Values.triton.image.pullPolicy }}
  command: ["tritonserver"]
  args:
    - --model-repository={{ include "vaegan.modelRepository" $root }}
    # explicit: only the models named here are loaded, and nothing else can be.
    - --model-control-mode=explicit
    {{- range $root.Values.triton.models }}
    - --load-model={{ . }}
    {{- end }}
    - --strict-readiness=true
    - --exit-on-error=true
    - --grpc-port={{ $root.Values.triton.ports.grpc }}
    - --http-port={{ $root.Values.triton.ports.http }}
    - --metrics-port={{ $root.Values.triton.ports.metrics }}
    - --allow-metrics=true
    - --allow-gpu-metrics={{ if gt (int $root.Values.triton.gpus) 0 }}true{{ else }}false{{ end }}
    # Admin APIs (model load/unload, repository index, shared memory) need a header
    # value that nobody outside this pod knows: the network can only infer.
    - --grpc-restricted-protocol=model-repository,shared-memory:vaegan-admin-key=$(TRITON_ADMIN_KEY)
    - --http-restricted-api=model-repository,shared-memory:vaegan-admin-key=$(TRITON_ADMIN_KEY)
  env:
    - name: TRITON_ADMIN_KEY
      valueFrom:
        secretKeyRef: {name: {{ include "vaegan.fullname" $root }}-triton-admin, key: key}
  {{- if and (eq $root.Values.modelRepository.source "objectStore") $root.Values.modelRepository.objectStore.credentialsSecret }}
  envFrom:
    - secretRef: {name: {{ $root.Values.modelRepository.objectStore.credentialsSecret }}}
  {{- end }}
  ports:
    - {name: {{ $ports }}grpc, containerPort: {{ $root.Values.triton.ports.grpc }}, protocol: TCP}
    - {name: {{ $ports }}http, containerPort: {{ $root.Values.triton.ports.http }}, protocol: TCP}
    - {name: {{ $ports }}metrics, containerPort: {{ $root.Values.triton.ports.metrics }}, protocol: TCP}
  # Model loading can take minutes (TensorRT plans, object stores): the startup probe
  # allows triton.startupSeconds before liveness starts counting.
  startupProbe:
    httpGet: {path: /v2/health/live, port: {{ $ports }}http}
    periodSeconds: 10
    failureThreshold: {{ div $root.Values.triton.startupSeconds 10 }}
  livenessProbe:
    httpGet: {path: /v2/health/live, port: {{ $ports }}http}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet: {path: /v2/health/ready, port: {{ $ports }}http}
    periodSeconds: 5
    failureThreshold: 2
  resources:
    requests:
      {{- toYaml $root.Values.triton.resources.requests | nindent 6 }}
    limits:
      {{- toYaml $root.Values.triton.resources.limits | nindent 6 }}
      {{- if gt (int $root.Values.triton.gpus) 0 }}
      nvidia.com/gpu: {{ $root.Values.triton.gpus }}
      {{- end }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: {{ $ports }}tmp, mountPath: /tmp}
    # The python backend talks to its stubs through shared memory; a co-located gateway
    # passes batches through it too (--triton-shm).
    - {name: shm, mountPath: /dev/shm}
    {{- if eq $root.Values.modelRepository.source "pvc" }}
    - name: models
      mountPath: /models
      readOnly: true
      {{- with $root.Values.modelRepository.pvc.subPath }}
      subPath: {{ . }}
      {{- end }}
    {{- end }}
{{- end -}}
