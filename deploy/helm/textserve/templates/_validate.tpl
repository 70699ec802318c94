{{/*
Cross-field rules values.schema.json cannot express. Each textserve.validateValues.<topic>
helper prints one message per broken rule; textserve.validateValues gathers them and
fails once, listing them all (as bitnami charts do).
*/}}
{{- define "textserve.validateValues" -}}
{{- $messages := list -}}
{{- $messages = append $messages (include "textserve.validateValues.nothingEnabled" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.dependencies" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.redis" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.secrets" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.gpu" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.images" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.claims" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.modelStorage" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.repository" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.scaling" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.shutdown" .) -}}
{{- $messages = append $messages (include "textserve.validateValues.ingress" .) -}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages) | fail -}}
{{- end -}}
{{- end -}}

{{/* Every component switched off. */}}
{{- define "textserve.validateValues.nothingEnabled" -}}
{{- $s := .Values.services -}}
{{- if not (or $s.tokenizer.enabled $s.embedding.enabled $s.classifier.enabled $s.generation.enabled .Values.gateway.enabled) -}}
textserve: every service and the gateway are disabled; enable at least one of services.{tokenizer,embedding,classifier,generation}.enabled or gateway.enabled.
{{- end -}}
{{- end -}}

{{/* A service that calls another one over gRPC needs that one deployed. */}}
{{- define "textserve.validateValues.dependencies" -}}
{{- $s := .Values.services -}}
{{- $out := list -}}
{{- if and $s.classifier.enabled $s.classifier.useEmbeddingService (not $s.embedding.enabled) -}}
{{- $out = append $out "services.classifier: useEmbeddingService=true calls the embedding service over gRPC, but services.embedding.enabled=false; enable embedding, or set services.classifier.useEmbeddingService=false to embed in-process." -}}
{{- end -}}
{{- if and $s.embedding.enabled $s.embedding.useTokenizerService (not $s.tokenizer.enabled) -}}
{{- $out = append $out "services.embedding: useTokenizerService=true calls the tokenizer service over gRPC, but services.tokenizer.enabled=false; enable tokenizer, or set services.embedding.useTokenizerService=false to tokenize in-process." -}}
{{- end -}}
{{- if and .Values.gateway.enabled (not $s.embedding.enabled) (not $s.generation.enabled) -}}
{{- $out = append $out "gateway: enabled=true, but both services.embedding.enabled and services.generation.enabled are false, so the gateway has nothing to serve; enable one of them or set gateway.enabled=false." -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* The cache backend and where Redis comes from. */}}
{{- define "textserve.validateValues.redis" -}}
{{- $r := .Values.global.redis -}}
{{- $out := list -}}
{{- if eq .Values.global.cache.backend "redis" -}}
{{- if and $r.deploy $r.url -}}
{{- $out = append $out (printf "global.redis: deploy=true and url=%q are both set; use the chart's Redis (deploy=true, url empty) or an external one (deploy=false, url set)." $r.url) -}}
{{- end -}}
{{- if and (not $r.deploy) (not $r.url) -}}
{{- $out = append $out "global.redis: global.cache.backend=redis needs Redis: set global.redis.deploy=true, or global.redis.url to an external Redis, or global.cache.backend to memory or none." -}}
{{- end -}}
{{- if and $r.deploy $r.tls.enabled -}}
{{- $out = append $out "global.redis: tls.enabled=true is for an external Redis (rediss://); the chart's own Redis serves plaintext inside the cluster. Set global.redis.deploy=false with url, or tls.enabled=false." -}}
{{- end -}}
{{- if and $r.tls.enabled (not $r.tls.existingSecret) -}}
{{- $out = append $out "global.redis: tls.enabled=true needs tls.existingSecret (a Secret holding the CA bundle)." -}}
{{- end -}}
{{- if and $r.tls.enabled (ne (not $r.tls.certKey) (not $r.tls.keyKey)) -}}
{{- $out = append $out (printf "global.redis: tls.certKey=%q and tls.keyKey=%q must be given together (mutual TLS) or both left empty." $r.tls.certKey $r.tls.keyKey) -}}
{{- end -}}
{{- if and $r.tls.enabled $r.url (not (hasPrefix "rediss://" $r.url)) -}}
{{- $out = append $out (printf "global.redis: tls.enabled=true needs url to start with rediss:// (got %q); every pod would refuse to start (cache.tls_ca_file needs a rediss:// url)." $r.url) -}}
{{- end -}}
{{- if and $r.url (not (regexMatch "^rediss?://" $r.url)) -}}
{{- $out = append $out (printf "global.redis: url=%q must start with redis:// or rediss://." $r.url) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* Features that need a Secret name. */}}
{{- define "textserve.validateValues.secrets" -}}
{{- $g := .Values.global -}}
{{- $out := list -}}
{{- if and $g.tls.enabled (not $g.tls.existingSecret) -}}
{{- $out = append $out "global.tls: enabled=true needs existingSecret (a Secret with tls.crt, tls.key and ca.crt, e.g. made by cert-manager)." -}}
{{- end -}}
{{- if and $g.tls.requireClientCert (not $g.tls.enabled) -}}
{{- $out = append $out "global.tls: requireClientCert=true needs enabled=true." -}}
{{- end -}}
{{- if and $g.auth.enabled (not $g.auth.existingSecret) -}}
{{- $out = append $out "global.auth: enabled=true needs existingSecret (a Secret with the accepted tokens and the services' client token)." -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* GPU requests, devices and image variants agree (GPU: a resource matching global.gpu.resourcePattern). */}}
{{- define "textserve.validateValues.gpu" -}}
{{- $out := list -}}
{{- range $svc := splitList " " (include "textserve.grpcServices" $) -}}
{{- $c := dict "ctx" $ "svc" $svc -}}
{{- $v := index $.Values.services $svc -}}
{{- if $v.enabled -}}
{{- $gpus := include "textserve.gpuLimits" $c -}}
{{- $variant := include "textserve.imageVariant" $c -}}
{{- $device := (($v.model | default dict).device | default "auto") -}}
{{- if and $gpus (ne $variant "cuda") -}}
{{- $out = append $out (printf "services.%s: resources.limits asks for %s but the image variant is %q; set services.%s.image.variant (or global.image.variant) to cuda." $svc $gpus $variant $svc) -}}
{{- end -}}
{{- if and (eq $device "cuda") (not (include "textserve.isGpu" $c)) -}}
{{- $out = append $out (printf "services.%s: model.device=cuda but resources.limits has no nvidia.com/gpu or other resource matching global.gpu.resourcePattern=%q, and resources.claims is empty; add resources.limits.nvidia.com/gpu: 1 (a MIG slice, a shared GPU or a DRA claim), or set model.device to auto or cpu." $svc $.Values.global.gpu.resourcePattern) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* A single global digest names one variant's image; a service of the other variant needs its own. */}}
{{- define "textserve.validateValues.images" -}}
{{- $out := list -}}
{{- $g := .Values.global.image -}}
{{- range $svc := splitList " " (printf "%s gateway" (include "textserve.grpcServices" $)) -}}
{{- $c := dict "ctx" $ "svc" $svc -}}
{{- $v := include "textserve.serviceValues" $c | fromYaml -}}
{{- $variant := include "textserve.imageVariant" $c -}}
{{- if and $v.enabled $g.digest (ne $variant $g.variant) (not (include "textserve.imageDigest" (dict "ctx" $ "own" ($v.image | default dict)))) -}}
{{- $path := ternary "gateway" (printf "services.%s" $svc) (eq $svc "gateway") -}}
{{- $out = append $out (printf "%s: uses the %s image but global.image.digest is the digest of the %s image (global.image.variant); set global.image.digests.%s (or %s.image.digest)." $path $variant $g.variant $variant $path) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* Container claims (resources.claims) name pod-level claims (resourceClaims). */}}
{{- define "textserve.validateValues.claims" -}}
{{- $out := list -}}
{{- range $svc := splitList " " (include "textserve.grpcServices" $) -}}
{{- $v := index $.Values.services $svc -}}
{{- if $v.enabled -}}
{{- $names := list -}}
{{- range $claim := ($v.resourceClaims | default list) -}}
{{- $names = append $names $claim.name -}}
{{- end -}}
{{- range $claim := (($v.resources | default dict).claims | default list) -}}
{{- if not (has $claim.name $names) -}}
{{- $out = append $out (printf "services.%s: resources.claims names %q but resourceClaims has no such claim; add {name: %s, resourceClaimTemplateName: ...} (or resourceClaimName) to services.%s.resourceClaims." $svc $claim.name $claim.name $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* Autoscaling bounds, scaling signals and disruption budgets. */}}
{{- define "textserve.validateValues.scaling" -}}
{{- $out := list -}}
{{- $metrics := .Values.global.metrics.enabled -}}
{{- range $svc := splitList " " (printf "%s gateway" (include "textserve.grpcServices" $)) -}}
{{- $c := dict "ctx" $ "svc" $svc -}}
{{- $v := include "textserve.serviceValues" $c | fromYaml -}}
{{- $path := ternary "gateway" (printf "services.%s" $svc) (eq $svc "gateway") -}}
{{- if $v.enabled -}}
{{- $a := $v.autoscaling -}}
{{- $queue := and $a.queueDepth $a.queueDepth.enabled -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- $out = append $out (printf "%s.autoscaling: minReplicas=%d is greater than maxReplicas=%d." $path (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}
{{- if and $a.enabled (not (include "textserve.cpuTarget" $c)) (not $queue) (not $a.extraMetrics) -}}
{{- $out = append $out (printf "%s.autoscaling: enabled=true but no metric is set; set targetCPUUtilizationPercentage or queueDepth.enabled=true (GPU services get no CPU target by default), or extraMetrics." $path) -}}
{{- end -}}
{{- if and $a.enabled $queue (not $metrics) -}}
{{- $out = append $out (printf "%s.autoscaling: queueDepth needs global.metrics.enabled=true (the metric comes from the pods' /metrics through prometheus-adapter)." $path) -}}
{{- end -}}
{{- $k := $v.keda | default dict -}}
{{- if and $k.enabled $a.enabled -}}
{{- $out = append $out (printf "%s: keda.enabled and autoscaling.enabled are both true; KEDA makes its own HPA, so use one of them." $path) -}}
{{- end -}}
{{- if and $k.enabled (not $metrics) -}}
{{- $out = append $out (printf "%s.keda: the Prometheus trigger needs global.metrics.enabled=true." $path) -}}
{{- end -}}
{{- if and $k.enabled (gt (int $k.minReplicaCount) (int $k.maxReplicaCount)) -}}
{{- $out = append $out (printf "%s.keda: minReplicaCount=%d is greater than maxReplicaCount=%d." $path (int $k.minReplicaCount) (int $k.maxReplicaCount)) -}}
{{- end -}}
{{- if $v.pdb.enabled -}}
{{- $least := ternary (int $a.minReplicas) (int $v.replicas) (eq $a.enabled true) -}}
{{- $min := $v.pdb.minAvailable -}}
{{- if and $min (ne (toString $min) "0") (ne (toString $min) "0%") -}}
{{- $s := toString $min -}}
{{- $needed := 0 -}}
{{- if hasSuffix "%" $s -}}
{{- /* Kubernetes rounds a minAvailable percentage up. */ -}}
{{- $needed = div (add (mul (int (trimSuffix "%" $s)) $least) 99) 100 | int -}}
{{- else -}}
{{- $needed = int $s -}}
{{- end -}}
{{- if ge $needed $least -}}
{{- $out = append $out (printf "%s.pdb: minAvailable=%s with %d replica(s) would block every voluntary eviction (node drains); lower it or use maxUnavailable." $path $s $least) -}}
{{- end -}}
{{- else if has (toString $v.pdb.maxUnavailable) (list "0" "0%") -}}
{{- $out = append $out (printf "%s.pdb: maxUnavailable=%s would block every voluntary eviction (node drains); use at least 1." $path (toString $v.pdb.maxUnavailable)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* terminationGracePeriodSeconds leaves room for the preStop sleep and the server's drain. */}}
{{- define "textserve.validateValues.shutdown" -}}
{{- $out := list -}}
{{- range $svc := splitList " " (printf "%s gateway" (include "textserve.grpcServices" $)) -}}
{{- $v := include "textserve.serviceValues" (dict "ctx" $ "svc" $svc) | fromYaml -}}
{{- $path := ternary "gateway" (printf "services.%s" $svc) (eq $svc "gateway") -}}
{{- $field := ternary "config.grace_period_s" "config.server.grace_period_s" (eq $svc "gateway") -}}
{{- if $v.enabled -}}
{{- $grace := 10.0 -}}
{{- $config := $v.config | default dict -}}
{{- $section := ternary $config ($config.server | default dict) (eq $svc "gateway") -}}
{{- if hasKey $section "grace_period_s" -}}{{- $grace = float64 $section.grace_period_s -}}{{- end -}}
{{- $needed := addf (float64 ($v.preStopSleepSeconds | default 0)) $grace -}}
{{- if lt (float64 $v.terminationGracePeriodSeconds) $needed -}}
{{- $out = append $out (printf "%s: terminationGracePeriodSeconds=%d is shorter than preStopSleepSeconds=%d + %s=%v; in-flight requests would be killed. Raise it to at least %v." $path (int $v.terminationGracePeriodSeconds) (int ($v.preStopSleepSeconds | default 0)) $field $grace (ceil $needed)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/* The gateway Ingress needs somewhere to route. */}}
{{- define "textserve.validateValues.ingress" -}}
{{- $gw := .Values.gateway -}}
{{- if and $gw.enabled $gw.ingress.enabled (not $gw.ingress.hosts) -}}
gateway.ingress: enabled=true needs at least one entry in hosts.
{{- end -}}
{{- end -}}

{{/* The model fetch init container needs something to fetch. */}}
{{- define "textserve.validateValues.modelStorage" -}}
{{- $out := list -}}
{{- range $svc := splitList " " (include "textserve.grpcServices" $) -}}
{{- $v := index $.Values.services $svc -}}
{{- $f := (($v.modelStorage | default dict).fetch | default dict) -}}
{{- if and $v.enabled $f.enabled (not $f.uri) (not $f.command) -}}
{{- $out = append $out (printf "services.%s.modelStorage.fetch: enabled=true needs uri (hf://, https://) or command." $svc) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}

{{/*
A model repository's version policy must keep every version the routing sends traffic to
(or mirrors to), and routing needs a repository.
*/}}
{{- define "textserve.validateValues.repository" -}}
{{- $out := list -}}
{{- range $svc := list "embedding" "classifier" "generation" -}}
{{- $v := index $.Values.services $svc -}}
{{- $repo := $v.repository | default dict -}}
{{- $routing := $repo.routing | default dict -}}
{{- $weights := $routing.weights | default dict -}}
{{- $shadow := toString ($routing.shadowVersion | default "") -}}
{{- $at := printf "services.%s.repository" $svc -}}
{{- if $v.enabled -}}
{{- if not $repo.enabled -}}
{{- if or $weights $shadow -}}
{{- $out = append $out (printf "%s: routing (weights, shadowVersion) is set but enabled=false; set repository.enabled=true with a volume, or remove the routing." $at) -}}
{{- end -}}
{{- else -}}
{{- /* Kubernetes refuses two mounts at one path; nothing else may sit where the repository goes. */ -}}
{{- $taken := list "/tmp" "/dev/shm" (include "textserve.cacheDir" $) (include "textserve.onnxCacheDir" $) (include "textserve.configDir" $) (include "textserve.routingDir" $) (include "textserve.tlsDir" $) (include "textserve.authDir" $) (include "textserve.redisSecretDir" $) (include "textserve.redisTlsDir" $) -}}
{{- if $.Values.global.models.volume -}}
{{- $taken = append $taken $.Values.global.models.mountPath -}}
{{- end -}}
{{- $ms := include "textserve.modelStorage" (dict "ctx" $ "svc" $svc) | fromYaml -}}
{{- if $ms.volume -}}
{{- $taken = append $taken $ms.mountPath -}}
{{- end -}}
{{- if has (trimSuffix "/" $repo.mountPath) $taken -}}
{{- $out = append $out (printf "%s: mountPath=%s is already a mount of the %s container; choose another path (default /var/lib/textserve/repository)." $at $repo.mountPath $svc) -}}
{{- end -}}
{{- $routed := list -}}
{{- range $version := keys $weights | sortAlpha -}}
{{- if gt (float64 (index $weights $version)) 0.0 -}}
{{- $routed = append $routed $version -}}
{{- end -}}
{{- end -}}
{{- if and $weights (not $routed) -}}
{{- $out = append $out (printf "%s.routing: every weight is 0; give at least one version a weight above 0, or leave weights empty (all traffic to the newest READY version)." $at) -}}
{{- end -}}
{{- if and (gt (float64 ($routing.shadowShare | default 0)) 0.0) (not $shadow) -}}
{{- $out = append $out (printf "%s.routing: shadowShare=%v needs shadowVersion (the version that gets the copies)." $at $routing.shadowShare) -}}
{{- end -}}
{{- if and $shadow (not (has $shadow $routed)) -}}
{{- $routed = append $routed $shadow -}}
{{- end -}}
{{- if eq $repo.versionPolicy "specific" -}}
{{- $specific := list -}}
{{- range $repo.specificVersions -}}
{{- $specific = append $specific (toString .) -}}
{{- end -}}
{{- if not $specific -}}
{{- $out = append $out (printf "%s: versionPolicy=specific needs specificVersions (e.g. [\"1\", \"2\"])." $at) -}}
{{- else -}}
{{- $missing := list -}}
{{- range $routed -}}
{{- if not (has . $specific) -}}
{{- $missing = append $missing . -}}
{{- end -}}
{{- end -}}
{{- if $missing -}}
{{- $out = append $out (printf "%s: routing sends traffic to version(s) %s, which versionPolicy=specific does not load (specificVersions: %s); add them to specificVersions." $at (join ", " $missing) (join ", " $specific)) -}}
{{- end -}}
{{- end -}}
{{- else if eq $repo.versionPolicy "latest" -}}
{{- if gt (len $routed) (int $repo.latestN) -}}
{{- $out = append $out (printf "%s: routing sends traffic to %d versions (%s) but versionPolicy=latest keeps latestN=%d loaded; set latestN to at least %d, or versionPolicy all or specific." $at (len $routed) (join ", " $routed) (int $repo.latestN) (len $routed)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- join "\n" $out -}}
{{- end -}}
