{{/*
Helpers of the textserve chart. Every helper is named textserve.<thing>; per-service
helpers take (dict "ctx" $ "svc" "embedding") where svc is one of tokenizer, embedding,
classifier, generation, gateway (or redis / monitoring / test for shared objects).
*/}}

{{/* The four gRPC services, in start order. */}}
{{- define "textserve.grpcServices" -}}
tokenizer embedding classifier generation
{{- end -}}

{{/* Chart name, cut to 63 characters. */}}
{{- define "textserve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name, cut to 63 characters (the release name alone when it already holds the chart name). */}}
{{- define "textserve.fullname" -}}
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

{{/*
Name of a per-service object: <fullname>-<svc>[-<suffix>]. The fullname part is cut so
the whole name fits 63 characters and the service part always survives (names of
different services never collide, however long the release name).
*/}}
{{- define "textserve.componentName" -}}
{{- $tail := .svc -}}
{{- if .suffix -}}
{{- $tail = printf "%s-%s" .svc .suffix -}}
{{- end -}}
{{- $base := include "textserve.fullname" .ctx | trunc (int (sub 62 (len $tail))) | trimSuffix "-" -}}
{{- printf "%s-%s" $base $tail -}}
{{- end -}}

{{/* chart label value */}}
{{- define "textserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component; a subset of textserve.labels. */}}
{{- define "textserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "textserve.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{/* Labels of every object of one component. */}}
{{- define "textserve.labels" -}}
helm.sh/chart: {{ include "textserve.chart" .ctx }}
{{ include "textserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: textserve
{{- end -}}

{{/* Labels matching every textserve pod of this release (network policies). */}}
{{- define "textserve.releasePodLabels" -}}
app.kubernetes.io/name: {{ include "textserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Deep merge of .src into .dst (mutates .dst): maps merge key by key, anything else from
.src replaces, false/0/"" included (sprig mergeOverwrite would skip those).
*/}}
{{- define "textserve.mergeInto" -}}
{{- $dst := .dst -}}
{{- range $key, $value := .src -}}
{{- if and (kindIs "map" $value) (hasKey $dst $key) (kindIs "map" (index $dst $key)) -}}
{{- include "textserve.mergeInto" (dict "dst" (index $dst $key) "src" $value) -}}
{{- else if or (kindIs "map" $value) (kindIs "slice" $value) -}}
{{- $_ := set $dst $key (deepCopy $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Values of one service: services.<svc>, or gateway. Returned as YAML (use fromYaml). */}}
{{- define "textserve.serviceValues" -}}
{{- if eq .svc "gateway" -}}
{{- toYaml .ctx.Values.gateway -}}
{{- else -}}
{{- toYaml (index .ctx.Values.services .svc) -}}
{{- end -}}
{{- end -}}

{{/* "true" when the service is enabled, else empty. */}}
{{- define "textserve.enabled" -}}
{{- if eq .svc "gateway" -}}
{{- if .ctx.Values.gateway.enabled }}true{{ end -}}
{{- else -}}
{{- if (index .ctx.Values.services .svc).enabled }}true{{ end -}}
{{- end -}}
{{- end -}}

{{/* Full gRPC service name reported in grpc.health.v1 (readiness). */}}
{{- define "textserve.grpcServiceName" -}}
{{- $names := dict "tokenizer" "TokenizerService" "embedding" "EmbeddingService" "classifier" "ClassifierService" "generation" "GenerationService" -}}
{{- printf "textserve.v1.%s" (get $names .) -}}
{{- end -}}

{{/* Environment variable prefix of a service's config section: TEXTSERVE_EMBEDDING. */}}
{{- define "textserve.envPrefix" -}}
{{- printf "TEXTSERVE_%s" (upper .) -}}
{{- end -}}

{{/* Image reference of one service: repository:tag-variant, or repository@digest of its variant. */}}
{{- define "textserve.image" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- include "textserve.imageRef" (dict "ctx" .ctx "own" ($v.image | default dict)) -}}
{{- end -}}

{{/*
Image reference from an override (.own: repository, tag, variant, digest) over global.image.
The digest is the override's, else global.image.digests.<variant>, else global.image.digest
when the variant is global.image.variant (that digest names one image, not both).
*/}}
{{- define "textserve.imageRef" -}}
{{- $g := .ctx.Values.global.image -}}
{{- $own := .own | default dict -}}
{{- $repository := $own.repository | default $g.repository -}}
{{- $variant := $own.variant | default $g.variant -}}
{{- $digest := include "textserve.imageDigest" . -}}
{{- if $digest -}}
{{- printf "%s@%s" $repository $digest -}}
{{- else -}}
{{- $tag := $own.tag | default $g.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s-%s" $repository $tag $variant -}}
{{- end -}}
{{- end -}}

{{/* Digest an image override resolves to (empty: pull by tag). Takes (dict "ctx" $ "own" $override). */}}
{{- define "textserve.imageDigest" -}}
{{- $g := .ctx.Values.global.image -}}
{{- $own := .own | default dict -}}
{{- $variant := $own.variant | default $g.variant -}}
{{- $own.digest | default (index ($g.digests | default dict) $variant) | default (ternary $g.digest "" (eq $variant $g.variant)) -}}
{{- end -}}

{{/* Pull policy of one service (its image.pullPolicy, else global.image.pullPolicy). */}}
{{- define "textserve.pullPolicy" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- ($v.image | default dict).pullPolicy | default .ctx.Values.global.image.pullPolicy -}}
{{- end -}}

{{/* cpu or cuda for one service. */}}
{{- define "textserve.imageVariant" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- ($v.image | default dict).variant | default .ctx.Values.global.image.variant -}}
{{- end -}}

{{/*
GPU resources a service's limits ask for, as "name=count" items joined by ", " (empty: none).
A resource is a GPU when its name matches global.gpu.resourcePattern.
*/}}
{{- define "textserve.gpuLimits" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- $pattern := .ctx.Values.global.gpu.resourcePattern -}}
{{- $found := list -}}
{{- range $name, $count := (($v.resources | default dict).limits | default dict) -}}
{{- if and (regexMatch $pattern $name) (gt (int $count) 0) -}}
{{- $found = append $found (printf "%s=%d" $name (int $count)) -}}
{{- end -}}
{{- end -}}
{{- join ", " $found -}}
{{- end -}}

{{/* "true" when a service asks for a GPU: a GPU extended resource or a DRA claim. */}}
{{- define "textserve.isGpu" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- if or (include "textserve.gpuLimits" .) (($v.resources | default dict).claims) -}}true{{- end -}}
{{- end -}}

{{/*
CPU utilisation target of a service's HPA (empty: no CPU metric): the value when set (0
switches it off), else 70 on CPU services and none on GPU services (GPU pods are not CPU-bound).
*/}}
{{- define "textserve.cpuTarget" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- $target := $v.autoscaling.targetCPUUtilizationPercentage -}}
{{- if kindIs "invalid" $target -}}
{{- if not (include "textserve.isGpu" .) -}}70{{- end -}}
{{- else if gt (int $target) 0 -}}
{{- int $target -}}
{{- end -}}
{{- end -}}

{{/* Whole CPU cores of a CPU quantity ("2", 2, "2000m"), else empty. */}}
{{- define "textserve.wholeCores" -}}
{{- if . -}}
{{- $s := toString . -}}
{{- if regexMatch "^[1-9][0-9]*$" $s -}}
{{- $s -}}
{{- else if regexMatch "^[1-9][0-9]*000m$" $s -}}
{{- trimSuffix "000m" $s -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A dict of camelCase values as snake_case config keys, empty strings left out (YAML). */}}
{{- define "textserve.snakeKeys" -}}
{{- $out := dict -}}
{{- range $key, $value := . -}}
{{- if not (and (kindIs "string" $value) (eq $value "")) -}}
{{- $_ := set $out (snakecase $key) $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* host:port another service uses to reach this one (headless DNS or the ClusterIP Service). */}}
{{- define "textserve.address" -}}
{{- $ctx := .ctx -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- $name := include "textserve.componentName" (dict "ctx" $ctx "svc" .svc) -}}
{{- if eq $ctx.Values.global.serviceDiscovery "headless" -}}
{{- $name = include "textserve.componentName" (dict "ctx" $ctx "svc" .svc "suffix" "headless") -}}
{{- end -}}
{{- printf "%s.%s.svc.%s:%d" $name $ctx.Release.Namespace $ctx.Values.global.clusterDomain (int $v.port) -}}
{{- end -}}

{{/* Redis URL the services use (chart Redis or the external one). */}}
{{- define "textserve.redisUrl" -}}
{{- $r := .Values.global.redis -}}
{{- if $r.deploy -}}
{{- printf "redis://%s.%s.svc.%s:6379/0" (include "textserve.componentName" (dict "ctx" . "svc" "redis")) .Release.Namespace .Values.global.clusterDomain -}}
{{- else -}}
{{- $r.url -}}
{{- end -}}
{{- end -}}

{{/* True when the chart deploys its own Redis. */}}
{{- define "textserve.deployRedis" -}}
{{- if and (eq .Values.global.cache.backend "redis") .Values.global.redis.deploy -}}true{{- end -}}
{{- end -}}

{{/* "true" for services that export ONNX graphs (and get the onnx-cache volume). */}}
{{- define "textserve.exportsOnnx" -}}
{{- if has . (list "embedding" "classifier" "generation") -}}true{{- end -}}
{{- end -}}

{{/* Paths inside the containers. */}}
{{- define "textserve.configDir" -}}/etc/textserve/config{{- end -}}
{{- define "textserve.configFile" -}}/etc/textserve/config/textserve.yaml{{- end -}}
{{- define "textserve.tlsDir" -}}/etc/textserve/tls{{- end -}}
{{- define "textserve.authDir" -}}/etc/textserve/auth{{- end -}}
{{- define "textserve.redisSecretDir" -}}/etc/textserve/redis{{- end -}}
{{- define "textserve.redisTlsDir" -}}/etc/textserve/redis-tls{{- end -}}
{{- define "textserve.cacheDir" -}}/var/cache/textserve{{- end -}}
{{- define "textserve.onnxCacheDir" -}}/var/cache/textserve/onnx{{- end -}}
{{- define "textserve.hfCacheDir" -}}/var/cache/textserve/huggingface{{- end -}}
{{- define "textserve.routingDir" -}}/etc/textserve/routing{{- end -}}
{{- define "textserve.routingFile" -}}/etc/textserve/routing/routing.yaml{{- end -}}

{{/*
The model repository values of one service (YAML; use fromYaml): services.<svc>.repository
when the service has one and it is enabled, else {} (tokenizer, gateway, switched off).
*/}}
{{- define "textserve.repository" -}}
{{- $out := dict -}}
{{- if has .svc (list "embedding" "classifier" "generation") -}}
{{- $repo := (index .ctx.Values.services .svc).repository | default dict -}}
{{- if $repo.enabled -}}
{{- $out = $repo -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The routing file of one service (YAML, repository.routing_file): the weighted split and the
shadow. It lives in a ConfigMap of its own that is left out of the pods' checksum/config, so
a `helm upgrade` changing only these restarts no pod; the kubelet updates the mounted file
and the service re-reads it.
*/}}
{{- define "textserve.routing" -}}
{{- $repo := include "textserve.repository" . | fromYaml -}}
{{- $routing := $repo.routing | default dict -}}
{{- $weights := dict -}}
{{- range $version, $weight := ($routing.weights | default dict) -}}
{{- $_ := set $weights (toString $version) $weight -}}
{{- end -}}
{{- toYaml (dict "weights" $weights "shadow_version" (toString ($routing.shadowVersion | default "")) "shadow_share" ($routing.shadowShare | default 0)) -}}
{{- end -}}

{{/*
The textserve config file (YAML, the structure of textserve.core.config.Settings) of one
service: log, metrics and cache from `global`, and the service's own section derived from
model, batcher and addresses, with `config` merged over it. Ports, secrets and mount paths
are set through the environment (textserve.env).
*/}}
{{- define "textserve.config" -}}
{{- $ctx := .ctx -}}
{{- $svc := .svc -}}
{{- $g := $ctx.Values.global -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- $root := dict -}}
{{- $_ := set $root "log" (dict "level" $g.log.level "format" $g.log.format) -}}
{{- $_ := set $root "metrics" (dict "enabled" $g.metrics.enabled "host" "0.0.0.0") -}}
{{- $cache := dict "backend" $g.cache.backend "ttl_s" (int $g.cache.ttlSeconds) "timeout_ms" $g.cache.timeoutMs -}}
{{- if eq $g.cache.backend "redis" -}}
{{- $_ := set $cache "url" (include "textserve.redisUrl" $ctx) -}}
{{- end -}}
{{- include "textserve.mergeInto" (dict "dst" $cache "src" ($g.cache.config | default dict)) -}}
{{- $_ := set $root "cache" $cache -}}
{{- $section := dict -}}
{{- if ne $svc "gateway" -}}
{{- $model := include "textserve.snakeKeys" ($v.model | default dict) | fromYaml -}}
{{- if and (hasKey $model "intra_op_threads") (eq (int $model.intra_op_threads) 0) -}}
{{- $cores := include "textserve.wholeCores" ((($v.resources | default dict).limits | default dict).cpu) -}}
{{- if $cores -}}
{{- $_ := set $model "intra_op_threads" (int $cores) -}}
{{- end -}}
{{- end -}}
{{- if eq $svc "tokenizer" -}}
{{- $_ := set $section "models" (list $model) -}}
{{- else -}}
{{- $_ := set $section "model" $model -}}
{{- end -}}
{{- $batcher := include "textserve.snakeKeys" ($v.batcher | default dict) | fromYaml -}}
{{- if eq $svc "generation" -}}
{{- include "textserve.mergeInto" (dict "dst" $section "src" $batcher) -}}
{{- else if $v.batcher -}}
{{- $_ := set $section "batcher" $batcher -}}
{{- end -}}
{{- /* Connection age: clients balancing over headless DNS re-resolve and reach new pods. */ -}}
{{- $age := merge (dict) ($v.connectionAge | default dict) ($g.connectionAge | default dict) -}}
{{- $_ := set $section "server" (dict "max_connection_age_ms" (mul (int $age.maxAgeSeconds) 1000) "max_connection_age_grace_ms" (mul (int $age.graceSeconds) 1000)) -}}
{{- $repo := include "textserve.repository" . | fromYaml -}}
{{- if $repo -}}
{{- /* path and routing_file are mount paths: set through the environment (textserve.env). */ -}}
{{- $r := dict "poll_interval_s" $repo.pollIntervalSeconds "version_policy" $repo.versionPolicy "latest_n" (int $repo.latestN) -}}
{{- with $repo.modelName -}}
{{- $_ := set $r "model_name" . -}}
{{- end -}}
{{- if eq $repo.versionPolicy "specific" -}}
{{- $versions := list -}}
{{- range $repo.specificVersions -}}
{{- $versions = append $versions (toString .) -}}
{{- end -}}
{{- $_ := set $r "specific_versions" $versions -}}
{{- end -}}
{{- $_ := set $section "repository" $r -}}
{{- end -}}
{{- if and (eq $svc "embedding") $v.useTokenizerService -}}
{{- $_ := set $section "tokenizer_address" (include "textserve.address" (dict "ctx" $ctx "svc" "tokenizer")) -}}
{{- end -}}
{{- if and (eq $svc "classifier") $v.useEmbeddingService -}}
{{- $_ := set $section "embedding_address" (include "textserve.address" (dict "ctx" $ctx "svc" "embedding")) -}}
{{- end -}}
{{- else -}}
{{- /* An empty address switches the gateway's endpoints for that service off. */ -}}
{{- range $backend := list "embedding" "generation" -}}
{{- $address := "" -}}
{{- if (index $ctx.Values.services $backend).enabled -}}
{{- $address = include "textserve.address" (dict "ctx" $ctx "svc" $backend) -}}
{{- end -}}
{{- $_ := set $section (printf "%s_address" $backend) $address -}}
{{- end -}}
{{- end -}}
{{- include "textserve.mergeInto" (dict "dst" $section "src" ($v.config | default dict)) -}}
{{- $_ := set $root $svc $section -}}
{{- toYaml $root -}}
{{- end -}}

{{/* Environment of one service's container: config file, ports, mount paths and secrets. */}}
{{- define "textserve.env" -}}
{{- $ctx := .ctx -}}
{{- $svc := .svc -}}
{{- $g := $ctx.Values.global -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
{{- $p := include "textserve.envPrefix" $svc -}}
- name: TEXTSERVE_CONFIG_FILE
  value: {{ include "textserve.configFile" $ctx | quote }}
{{- if eq $svc "gateway" }}
- name: TEXTSERVE_GATEWAY__PORT
  value: {{ $v.port | int | quote }}
{{- else }}
- name: {{ $p }}__SERVER__PORT
  value: {{ $v.port | int | quote }}
{{- end }}
- name: TEXTSERVE_METRICS__PORT
  value: {{ $g.metrics.port | int | quote }}
- name: HF_HOME
  value: {{ include "textserve.hfCacheDir" $ctx | quote }}
{{- if and (ne $svc "gateway") (ne $svc "tokenizer") }}
- name: {{ $p }}__MODEL__ONNX_CACHE_DIR
  value: {{ include "textserve.onnxCacheDir" $ctx | quote }}
{{- end }}
{{- $repo := include "textserve.repository" . | fromYaml }}
{{- if $repo }}
- name: {{ $p }}__REPOSITORY__PATH
  value: {{ $repo.mountPath | quote }}
- name: {{ $p }}__REPOSITORY__ROUTING_FILE
  value: {{ include "textserve.routingFile" $ctx | quote }}
{{- end }}
{{- if and (eq $g.cache.backend "redis") (ne $svc "gateway") }}
{{- if $g.redis.auth.existingSecret }}
- name: TEXTSERVE_CACHE__PASSWORD_FILE
  value: {{ printf "%s/%s" (include "textserve.redisSecretDir" $ctx) $g.redis.auth.passwordKey | quote }}
{{- end }}
{{- if $g.redis.tls.enabled }}
- name: TEXTSERVE_CACHE__TLS_CA_FILE
  value: {{ printf "%s/%s" (include "textserve.redisTlsDir" $ctx) $g.redis.tls.caKey | quote }}
{{- if $g.redis.tls.certKey }}
- name: TEXTSERVE_CACHE__TLS_CERT_FILE
  value: {{ printf "%s/%s" (include "textserve.redisTlsDir" $ctx) $g.redis.tls.certKey | quote }}
- name: TEXTSERVE_CACHE__TLS_KEY_FILE
  value: {{ printf "%s/%s" (include "textserve.redisTlsDir" $ctx) $g.redis.tls.keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- if $g.tls.enabled }}
{{- $tls := include "textserve.tlsDir" $ctx }}
{{- if ne $svc "gateway" }}
- name: {{ $p }}__SERVER__HEALTH_PORT
  value: {{ $g.tls.healthPort | int | quote }}
- name: {{ $p }}__SERVER__TLS__ENABLED
  value: "true"
- name: {{ $p }}__SERVER__TLS__CERT_FILE
  value: {{ printf "%s/tls.crt" $tls | quote }}
- name: {{ $p }}__SERVER__TLS__KEY_FILE
  value: {{ printf "%s/tls.key" $tls | quote }}
- name: {{ $p }}__SERVER__TLS__CA_FILE
  value: {{ printf "%s/ca.crt" $tls | quote }}
- name: {{ $p }}__SERVER__TLS__REQUIRE_CLIENT_CERT
  value: {{ $g.tls.requireClientCert | toString | quote }}
{{- end }}
- name: {{ $p }}__CLIENT__TLS__ENABLED
  value: "true"
- name: {{ $p }}__CLIENT__TLS__CA_FILE
  value: {{ printf "%s/ca.crt" $tls | quote }}
{{- if $g.tls.requireClientCert }}
- name: {{ $p }}__CLIENT__TLS__CERT_FILE
  value: {{ printf "%s/tls.crt" $tls | quote }}
- name: {{ $p }}__CLIENT__TLS__KEY_FILE
  value: {{ printf "%s/tls.key" $tls | quote }}
{{- end }}
{{- end }}
{{- if $g.auth.enabled }}
{{- $auth := include "textserve.authDir" $ctx }}
{{- if eq $svc "gateway" }}
- name: TEXTSERVE_GATEWAY__CLIENT_TOKEN_FILE
  value: {{ printf "%s/%s" $auth $g.auth.clientTokenKey | quote }}
{{- else }}
- name: {{ $p }}__SERVER__AUTH__ENABLED
  value: "true"
- name: {{ $p }}__SERVER__AUTH__TOKENS_FILE
  value: {{ printf "%s/%s" $auth $g.auth.tokensKey | quote }}
- name: {{ $p }}__SERVER__AUTH__CLIENT_TOKEN_FILE
  value: {{ printf "%s/%s" $auth $g.auth.clientTokenKey | quote }}
{{- with $g.auth.adminTokensKey }}
- name: {{ $p }}__SERVER__AUTH__ADMIN_TOKENS_FILE
  value: {{ printf "%s/%s" $auth . | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with $g.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volume mounts of one service's container. */}}
{{- define "textserve.volumeMounts" -}}
{{- $ctx := .ctx -}}
{{- $g := $ctx.Values.global -}}
{{- $model := ne .svc "gateway" -}}
{{- $redis := and $model (eq $g.cache.backend "redis") -}}
- name: config
  mountPath: {{ include "textserve.configDir" $ctx }}
  readOnly: true
- name: tmp
  mountPath: /tmp
# The Hugging Face cache (HF_HOME under it).
- name: cache
  mountPath: {{ include "textserve.cacheDir" $ctx }}
{{- if include "textserve.exportsOnnx" .svc }}
- name: onnx-cache
  mountPath: {{ include "textserve.onnxCacheDir" $ctx }}
{{- end }}
{{- if and $model $g.models.volume }}
- name: models
  mountPath: {{ $g.models.mountPath }}
  readOnly: true
{{- end }}
{{- $ms := include "textserve.modelStorage" . | fromYaml }}
{{- if $ms.volume }}
- name: model-storage
  mountPath: {{ $ms.mountPath }}
  readOnly: true
{{- end }}
{{- if $ms.shm }}
- name: shm
  mountPath: /dev/shm
{{- end }}
{{- $repo := include "textserve.repository" . | fromYaml }}
{{- if $repo }}
- name: model-repository
  mountPath: {{ $repo.mountPath }}
  readOnly: true
# A directory mount (no subPath), so the kubelet's ConfigMap updates reach the file.
- name: routing
  mountPath: {{ include "textserve.routingDir" $ctx }}
  readOnly: true
{{- end }}
{{- if and $redis $g.redis.auth.existingSecret }}
- name: redis-password
  mountPath: {{ include "textserve.redisSecretDir" $ctx }}
  readOnly: true
{{- end }}
{{- if and $redis $g.redis.tls.enabled }}
- name: redis-tls
  mountPath: {{ include "textserve.redisTlsDir" $ctx }}
  readOnly: true
{{- end }}
{{- if $g.tls.enabled }}
- name: tls
  mountPath: {{ include "textserve.tlsDir" $ctx }}
  readOnly: true
{{- end }}
{{- if $g.auth.enabled }}
- name: auth
  mountPath: {{ include "textserve.authDir" $ctx }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of one service's pod. */}}
{{- define "textserve.volumes" -}}
{{- $ctx := .ctx -}}
{{- $g := $ctx.Values.global -}}
{{- $model := ne .svc "gateway" -}}
{{- $redis := and $model (eq $g.cache.backend "redis") -}}
- name: config
  configMap:
    name: {{ include "textserve.componentName" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $g.tmpSizeLimit }}
- name: cache
{{- if $g.hfCache.volume }}
  {{- toYaml $g.hfCache.volume | nindent 2 }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $g.hfCache.sizeLimit }}
{{- end }}
{{- if include "textserve.exportsOnnx" .svc }}
- name: onnx-cache
{{- if $g.onnxCache.volume }}
  {{- toYaml $g.onnxCache.volume | nindent 2 }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $g.onnxCache.sizeLimit }}
{{- end }}
{{- end }}
{{- if and $model $g.models.volume }}
- name: models
  {{- toYaml $g.models.volume | nindent 2 }}
{{- end }}
{{- $ms := include "textserve.modelStorage" . | fromYaml }}
{{- if $ms.volume }}
- name: model-storage
  {{- toYaml $ms.volume | nindent 2 }}
{{- end }}
{{- if $ms.fetch }}
- name: fetch-script
  configMap:
    name: {{ include "textserve.componentName" (dict "ctx" $ctx "svc" "fetch") }}
{{- end }}
{{- if $ms.shm }}
- name: shm
  emptyDir:
    medium: Memory
    sizeLimit: {{ $ms.shm }}
{{- end }}
{{- $repo := include "textserve.repository" . | fromYaml }}
{{- if $repo }}
- name: model-repository
{{- if $repo.volume }}
  {{- toYaml $repo.volume | nindent 2 }}
{{- else }}
  emptyDir:
    sizeLimit: {{ $repo.sizeLimit }}
{{- end }}
- name: routing
  configMap:
    name: {{ include "textserve.componentName" (dict "ctx" $ctx "svc" .svc "suffix" "routing") }}
{{- end }}
{{- if and $redis $g.redis.auth.existingSecret }}
- name: redis-password
  secret:
    secretName: {{ $g.redis.auth.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $g.redis.auth.passwordKey }}
        path: {{ $g.redis.auth.passwordKey }}
{{- end }}
{{- if and $redis $g.redis.tls.enabled }}
- name: redis-tls
  secret:
    secretName: {{ $g.redis.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $g.tls.enabled }}
- name: tls
  secret:
    secretName: {{ $g.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $g.auth.enabled }}
- name: auth
  secret:
    secretName: {{ $g.auth.existingSecret }}
    defaultMode: 0440
    items:
      {{- if ne .svc "gateway" }}
      - key: {{ $g.auth.tokensKey }}
        path: {{ $g.auth.tokensKey }}
      {{- with $g.auth.adminTokensKey }}
      - key: {{ . }}
        path: {{ . }}
      {{- end }}
      {{- end }}
      - key: {{ $g.auth.clientTokenKey }}
        path: {{ $g.auth.clientTokenKey }}
{{- end }}
{{- end -}}

{{/* Host name a TLS client checks in the service certificate (the address's host). */}}
{{- define "textserve.tlsServerName" -}}
{{- include "textserve.address" . | splitList ":" | first -}}
{{- end -}}

{{/*
One probe of a gRPC service: a native kubelet gRPC probe (grpc.health.v1). Kubelet's gRPC
probes speak plaintext only, so with TLS on they go to the server's plaintext health-only
port (server.health_port = global.tls.healthPort).
Takes (dict "ctx" $ "svc" "embedding" "healthService" "" "probe" $v.probes.readiness).
*/}}
{{- define "textserve.grpcProbe" -}}
{{- $v := include "textserve.serviceValues" . | fromYaml -}}
grpc:
  port: {{ include "textserve.probePort" (dict "ctx" .ctx "port" $v.port) }}
  service: {{ .healthService | quote }}
{{- range $key, $value := .probe }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end -}}

{{/* Port kubelet probes: the gRPC port, or the plaintext health port when TLS is on. */}}
{{- define "textserve.probePort" -}}
{{- if .ctx.Values.global.tls.enabled -}}
{{- .ctx.Values.global.tls.healthPort | int -}}
{{- else -}}
{{- .port | int -}}
{{- end -}}
{{- end -}}

{{/* Probe of the HTTP gateway: HTTP GET on .path, else a TCP connect. */}}
{{- define "textserve.httpProbe" -}}
{{- if .path }}
httpGet:
  path: {{ .path }}
  port: http
{{- else }}
tcpSocket:
  port: http
{{- end }}
{{- range $key, $value := .probe }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end -}}

{{/* Service account name of one component. */}}
{{- define "textserve.serviceAccountName" -}}
{{- if .ctx.Values.global.serviceAccount.create -}}
{{- include "textserve.componentName" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/* Soft spreading of a component's pods over nodes, used when `affinity` is empty. */}}
{{- define "textserve.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "textserve.selectorLabels" . | nindent 12 }}
{{- end -}}


{{/*
Model storage of one gRPC service (YAML): volume (the source, or an emptyDir when only the
fetch init container fills it), mountPath, fetch (true when the init container runs) and
shm (the /dev/shm size limit, empty: none). Empty for the gateway.
*/}}
{{- define "textserve.modelStorage" -}}
{{- $out := dict -}}
{{- if ne .svc "gateway" -}}
{{- $ms := (index .ctx.Values.services .svc).modelStorage | default dict -}}
{{- $fetch := ($ms.fetch | default dict).enabled -}}
{{- $volume := $ms.volume -}}
{{- if and (not $volume) $fetch -}}
{{- $volume = dict "emptyDir" (dict "sizeLimit" $ms.sizeLimit) -}}
{{- end -}}
{{- if $volume -}}
{{- $_ := set $out "volume" $volume -}}
{{- $_ := set $out "mountPath" $ms.mountPath -}}
{{- end -}}
{{- if $fetch -}}{{- $_ := set $out "fetch" true -}}{{- end -}}
{{- if ($ms.sharedMemory | default dict).enabled -}}
{{- $_ := set $out "shm" $ms.sharedMemory.sizeLimit -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The init container that downloads a service's model into its model-storage volume and
checks it (files/fetch_model.py in the textserve image, or modelStorage.fetch.command).
*/}}
{{- define "textserve.fetchContainer" -}}
{{- $ms := include "textserve.modelStorage" . | fromYaml -}}
{{- if $ms.fetch -}}
{{- $f := (index .ctx.Values.services .svc).modelStorage.fetch -}}
{{- $g := .ctx.Values.global -}}
- name: fetch-model
  image: {{ include "textserve.imageRef" (dict "ctx" .ctx "own" (merge (dict) ($f.image | default dict) ((index .ctx.Values.services .svc).image | default dict))) | quote }}
  imagePullPolicy: {{ ($f.image | default dict).pullPolicy | default $g.image.pullPolicy }}
  {{- if $f.command }}
  command:
    {{- toYaml $f.command | nindent 4 }}
  {{- else }}
  command:
    - python
    - /etc/textserve/fetch/fetch_model.py
    - --uri
    - {{ $f.uri | quote }}
    - --dest
    - {{ $ms.mountPath | quote }}
    {{- with $f.sha256 }}
    - --sha256
    - {{ . | quote }}
    {{- end }}
  {{- end }}
  env:
    - name: HF_HOME
      value: /tmp/huggingface
    - name: HF_HUB_OFFLINE
      value: "0"
    {{- with $f.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $f.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $g.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: model-storage
      mountPath: {{ $ms.mountPath }}
    - name: fetch-script
      mountPath: /etc/textserve/fetch
      readOnly: true
    - name: tmp
      mountPath: /tmp
{{- end -}}
{{- end -}}
