{{- define "vt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "vt.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "vt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vaegan
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "vt.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{ printf "%s/%s@%s" .Values.image.registry .Values.image.repository .Values.image.digest }}
{{- else -}}
{{ printf "%s/%s:%s" .Values.image.registry .Values.image.repository $tag }}
{{- end -}}
{{- end -}}

{{- define "vt.checkpointClaim" -}}
{{- default (printf "%s-checkpoints" (include "vt.fullname" .)) .Values.checkpoints.existingClaim -}}
{{- end -}}

{{- define "vt.ranksPerNode" -}}
{{- if gt (int .Values.gpusPerNode) 0 }}{{ .Values.gpusPerNode }}{{ else }}{{ .Values.cpuRanksPerNode }}{{ end -}}
{{- end -}}

{{/*
The training container (call with dict "root" $ "extraEnv" LIST): torchrun with the c10d rendezvous at $RDZV_HOST, then (node 0) a
marker the export Job waits for. Resumes the run when a checkpoint exists, so a restarted
pod or Job continues instead of starting over.
*/}}
{{- define "vt.trainContainer" -}}
{{- $r := .root -}}
- name: pytorch  # the container name the Training Operator expects
  image: {{ include "vt.image" $r }}
  imagePullPolicy: {{ $r.Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -e
      # indexedJob sets NODE_INDEX and RDZV_HOST; the Training Operator sets RANK (the pod's)
      # and MASTER_ADDR (the master pod's Service).
      NODE_INDEX="${NODE_INDEX:-$RANK}"
      RDZV_HOST="${RDZV_HOST:-$MASTER_ADDR}"
      RUN=/checkpoints/{{ $r.Values.train.runName }}
      RESUME=""
      if [ -f "$RUN/checkpoints/last.pt" ]; then RESUME="--resume"; fi
      torchrun \
        --nnodes={{ $r.Values.nodes }} \
        --nproc-per-node={{ include "vt.ranksPerNode" $r }} \
        --rdzv-backend=c10d \
        --rdzv-endpoint="$RDZV_HOST:{{ $r.Values.rendezvousPort }}" \
        --rdzv-id="$RDZV_ID" \
        --max-restarts={{ $r.Values.maxRestarts }} \
        -m vaegan.cli train --data /data --out "$RUN" \
        --preset {{ $r.Values.train.preset }} --steps {{ $r.Values.train.steps }} --quiet $RESUME{{ range $r.Values.train.set }} \
        --set {{ . | quote }}{{ end }}
      if [ "$NODE_INDEX" = "0" ]; then touch "$RUN/TRAINED"; fi
  env:
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    - name: RDZV_ID
      value: {{ include "vt.fullname" $r | quote }}
    - name: PYTHONUNBUFFERED
      value: "1"
    - name: HOME  # caches (torch.compile, Triton kernels) on the writable /tmp
      value: /tmp
  ports:
    - name: rendezvous
      containerPort: {{ $r.Values.rendezvousPort }}
  resources:
    {{- $res := deepCopy $r.Values.resources }}
    {{- if gt (int $r.Values.gpusPerNode) 0 }}
    {{- $_ := set $res "limits" (merge (dict "nvidia.com/gpu" $r.Values.gpusPerNode) (default dict $res.limits)) }}
    {{- end }}
    {{- toYaml $res | nindent 4 }}
  securityContext:
    {{- toYaml $r.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: data, mountPath: /data, readOnly: true{{ with $r.Values.data.subPath }}, subPath: {{ . }}{{ end }}}
    - {name: checkpoints, mountPath: /checkpoints}
    - {name: shm, mountPath: /dev/shm}
    - {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "vt.trainPodSpec" -}}
automountServiceAccountToken: false  # training never talks to the Kubernetes API
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: data
    persistentVolumeClaim: {claimName: {{ .Values.data.existingClaim }}, readOnly: true}
  - name: checkpoints
    persistentVolumeClaim: {claimName: {{ include "vt.checkpointClaim" . }}}
  - name: shm
    emptyDir: {medium: Memory, sizeLimit: {{ .Values.shmSize }}}
  - name: tmp
    emptyDir: {}
{{- end -}}
