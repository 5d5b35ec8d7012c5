{{/* Names, labels and image references shared by every template. */}}

{{- define "ondeck.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or the release name when it already holds the chart name. */}}
{{- define "ondeck.fullname" -}}
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

{{- define "ondeck.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ondeck.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ondeck.name" . | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "ondeck.labels" -}}
helm.sh/chart: {{ include "ondeck.chart" . | quote }}
{{ include "ondeck.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ondeck
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end }}

{{- define "ondeck.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ondeck.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "ondeck.imageRef" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "ondeck.operatorImage" -}}
{{- include "ondeck.imageRef" (dict "root" . "image" .Values.image) }}
{{- end }}

{{- define "ondeck.serverImage" -}}
{{- include "ondeck.imageRef" (dict "root" . "image" .Values.config.serverImage) }}
{{- end }}

{{/* The conversion Job's image; the server image when config.converterImage.repository
     is empty. */}}
{{- define "ondeck.converterImage" -}}
{{- if .Values.config.converterImage.repository }}
{{- include "ondeck.imageRef" (dict "root" . "image" .Values.config.converterImage) }}
{{- else }}
{{- include "ondeck.serverImage" . }}
{{- end }}
{{- end }}

{{/* The watched namespaces, de-duplicated, sorted and comma-separated (how the
     operator's ONDECK_NAMESPACES reads them); empty means cluster-wide mode. */}}
{{- define "ondeck.watchNamespaces" -}}
{{- .Values.watch.namespaces | uniq | sortAlpha | join "," }}
{{- end }}

{{/* The operator's config file (OperatorConfig, camelCase keys). */}}
{{- define "ondeck.config" -}}
{{- $c := .Values.config }}
{{- $config := dict
  "serverImage" (include "ondeck.serverImage" .)
  "converterImage" (include "ondeck.converterImage" .)
  "imagePullPolicy" $c.imagePullPolicy
  "jobBackoffLimit" $c.jobBackoffLimit
  "jobTtlSecondsAfterFinished" $c.jobTtlSecondsAfterFinished
  "runAsUser" $c.runAsUser
  "runAsGroup" $c.runAsGroup
  "clusterDomain" $c.clusterDomain }}
{{- if $c.artifactStorageClass }}
{{- $_ := set $config "artifactStorageClass" $c.artifactStorageClass }}
{{- end }}
{{- toYaml (mergeOverwrite $config (deepCopy $c.extra)) }}
{{- end }}

{{/* The operator's RBAC rules file (owned by the operator's code, see files/). */}}
{{- define "ondeck.rules" -}}
{{- $raw := .Files.Get "files/operator-rules.yaml" }}
{{- if not $raw }}
{{- fail "files/operator-rules.yaml is missing from the chart" }}
{{- end }}
{{- toJson (fromYaml $raw) }}
{{- end }}

{{/* The operator's RBAC rules, from files/operator-rules.yaml (maintained with the
     operator's code), less the peering resource the other mode uses: cluster-wide mode
     peers through ClusterKopfPeerings, namespaced mode through KopfPeerings. */}}
{{- define "ondeck.rbacRules" -}}
{{- $file := .Files.Get "files/operator-rules.yaml" }}
{{- if not $file }}
{{- fail "files/operator-rules.yaml is missing from the chart" }}
{{- end }}
{{- $unused := ternary "clusterkopfpeerings" "kopfpeerings" (not (empty .Values.watch.namespaces)) }}
{{- $rules := list }}
{{- range (fromYaml $file).rules }}
{{- $resources := without .resources $unused }}
{{- if $resources }}
{{- $rules = append $rules (merge (dict "resources" $resources) (omit . "resources")) }}
{{- end }}
{{- end }}
{{- toYaml $rules }}
{{- end }}
