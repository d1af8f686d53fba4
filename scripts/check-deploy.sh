#!/usr/bin/env bash
# `just test`: the Kubernetes manifests in deploy/ are valid and match the
# stack compose.yaml runs. No cluster runs here, so:
#   - every manifest of deploy/k8s (exactly those kustomization.yaml lists) is
#     validated strictly against the Kubernetes API schemas that the PyPI
#     package kubernetes-validate bundles (offline; scripts/install-deps.sh
#     installs it, pinned), for the oldest and the newest version we claim;
#     a kind it has no schema for is a failure, not a warning;
#   - the images and the environment names are compose.yaml's (every name
#     compose.yaml gives a service, plus only known extras; every
#     SYSMON_<SERVICE>_<FIELD> names a real field of that service's config),
#     the NATS values are nats/hub.conf's (domain, sync_interval) with the
#     pinned nats-server, and each workload has what docs/operations.md says:
#     probes on /health, requests and limits, non-root, two persisters.
# The NATS chart itself cannot be rendered here (no chart repository is
# reachable); its values are checked for the keys this stack relies on.
set -euo pipefail
cd "$(dirname "$0")/.."
KV="${KUBERNETES_VALIDATE_BIN:-}"
[ -x "$KV" ] || { echo "check-deploy: kubernetes-validate is missing (eval \"\$(scripts/install-deps.sh)\")" >&2; exit 1; }
PY="$(dirname "$KV")/python"

# The manifests are exactly those kustomization.yaml lists.
mapfile -t listed < <("$PY" -c '
import yaml
for r in yaml.safe_load(open("deploy/k8s/kustomization.yaml"))["resources"]: print(r)')
present="$(cd deploy/k8s && ls *.yaml | grep -vx kustomization.yaml | sort)"
if [ "$(printf '%s\n' "${listed[@]}" | sort)" != "$present" ]; then
  echo "check-deploy: deploy/k8s/kustomization.yaml lists [${listed[*]}], the folder has [$(echo $present)]" >&2
  exit 1
fi

for version in 1.29.0 1.37.0; do
  if ! out="$(cd deploy/k8s && "$KV" --strict --quiet -k "$version" "${listed[@]}" 2>&1)" || [ -n "$out" ]; then
    echo "check-deploy: deploy/k8s against Kubernetes $version:" >&2
    echo "$out" >&2
    exit 1
  fi
done

"$PY" - "${listed[@]}" <<'EOF'
import re, sys, yaml

bad = []
def need(cond, what):
    if not cond:
        bad.append(what)

docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f"deploy/k8s/{f}")) if d]
objs = {(d["kind"], d["metadata"]["name"]): d for d in docs}
compose = yaml.safe_load(open("compose.yaml"))
cs = compose["services"]
values = yaml.safe_load(open("deploy/nats-values.yaml"))
hub_conf = open("nats/hub.conf").read()
nats_version = re.search(r"^NATS_VERSION=.([0-9.]+).", open("scripts/install-deps.sh").read(), re.M).group(1)

def workload(kind, name):
    o = objs.get((kind, name))
    need(o is not None, f"no {kind} {name}")
    return o or {"spec": {"template": {"spec": {"containers": []}}}}

def pod(o):
    return o["spec"]["template"]["spec"]

def env_of(c):
    return {e["name"]: e for e in c.get("env", [])}

# Images: the services' image is compose.yaml's, the database's too, NATS the
# pinned version compose.yaml runs.
ours = compose["x-sysmonstm"]["image"]
services = {"persister": "Deployment", "alerter": "Deployment", "gateway": "Deployment", "agent": "DaemonSet"}
for name, kind in services.items():
    p = pod(workload(kind, name))
    for c in p.get("initContainers", []) + p["containers"]:
        need(c.get("image") == ours, f"{name}/{c['name']}: image {c.get('image')!r}, compose.yaml builds {ours!r}")
db = pod(workload("StatefulSet", "timescaledb"))
need(db["containers"][0]["image"] == cs["postgres"]["image"],
     f"timescaledb image {db['containers'][0]['image']!r} is not compose.yaml's {cs['postgres']['image']!r}")
tag = values["container"]["image"]["tag"]
need(tag.startswith(f"{nats_version}-"), f"nats-values: image tag {tag} is not the pinned nats-server {nats_version}")
for n in ["hub", "edge"]:
    need(cs[n]["image"] == f"nats:{tag}", f"nats-values: image nats:{tag}, compose.yaml's {n} runs {cs[n]['image']}")

# Environment names: compose.yaml's, plus only these extras.
extras = {"POSTGRES_PASSWORD", "NODE_NAME", "SYSMON_GATEWAY_API_TOKEN",
          "SYSMON_PERSISTER_REPLICAS", "SYSMON_ALERTER_REPLICAS", "SYSMON_GATEWAY_REPLICAS"}
def config_field_exists(var):
    m = re.match(r"^SYSMON_(PERSISTER|ALERTER|GATEWAY|AGENT)_(.+)$", var)
    if not m:
        return True
    field = m.group(2).split("__")[0].lower()
    src = open(f"services/{m.group(1).lower()}/src/config.rs").read()
    return re.search(rf"^\s*pub {field}:", src, re.M) is not None
replicas = str(values["config"]["cluster"]["replicas"])
for name, kind in services.items():
    c = pod(workload(kind, name))["containers"][0]
    got = env_of(c)
    want = set((cs[name].get("environment") or {}).keys())
    need(want <= set(got), f"{name}: compose.yaml sets {sorted(want - set(got))}, deploy/k8s does not")
    need(set(got) - want <= extras, f"{name}: deploy/k8s sets {sorted(set(got) - want - extras)}, unknown to compose.yaml")
    for var in set(got) | want:
        need(config_field_exists(var), f"{name}: {var} names no field of services/{name}/src/config.rs")
    cmd = cs[name].get("command") or []
    need(c.get("command", [None])[0] == cmd[0], f"{name}: runs {c.get('command')}, compose.yaml {cmd}")
    url = got.get("NATS_URL", {}).get("value", "")
    need(re.match(rf"^nats://{values['fullnameOverride']}(\.sysmonstm\.svc)?:4222$", url),
         f"{name}: NATS_URL {url!r} is not the chart's Service {values['fullnameOverride']}:4222")
    if "DATABASE_URL" in got:
        need("@timescaledb:5432/sysmon" in got["DATABASE_URL"].get("value", ""), f"{name}: DATABASE_URL is not the timescaledb Service")
    r = [v for k, v in got.items() if k.endswith("_REPLICAS")]
    for v in r:
        need(v.get("value") == replicas, f"{name}: replicas {v.get('value')}, the NATS cluster has {replicas} servers")

# What each workload must have.
for (kind, name), o in objs.items():
    if kind not in ("Deployment", "DaemonSet", "StatefulSet"):
        continue
    p = pod(o)
    psc = p.get("securityContext", {})
    for c in p.get("initContainers", []) + p["containers"]:
        where = f"{name}/{c['name']}"
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            need({"cpu", "memory"} <= set(res.get(k, {})), f"{where}: no {k} for cpu and memory")
        sc = c.get("securityContext", {})
        need(sc.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation allowed")
        need("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities not dropped")
        nonroot = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        # The one exception, documented in agent.yaml: a chown of the
        # agent's state directory on the node, with CAP_CHOWN only.
        if (name, c["name"]) == ("agent", "state-owner"):
            need(sc.get("capabilities", {}).get("add") == ["CHOWN"], f"{where}: more than CAP_CHOWN")
        else:
            need(nonroot is True, f"{where}: not runAsNonRoot")
for name, port in [("persister", 9102), ("alerter", 9103), ("gateway", 8080)]:
    c = pod(workload("Deployment", name))["containers"][0]
    ports = {p["containerPort"] for p in c.get("ports", [])}
    need(port in ports, f"{name}: does not expose {port} as compose.yaml does")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        need("httpGet" in c.get(probe, {}), f"{name}: no HTTP {probe}")
    need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/health", f"{name}: liveness is not /health")
need(workload("Deployment", "persister")["spec"].get("replicas", 1) >= 2, "fewer than two persisters")
need(workload("Deployment", "alerter")["spec"].get("replicas", 1) == 1, "more than one alerter")
need(workload("Deployment", "alerter")["spec"].get("strategy", {}).get("type") == "Recreate", "the alerter is rolled, not replaced")
need(pod(workload("DaemonSet", "agent")).get("hostPID") is True, "the agent does not see the node's processes (hostPID)")
need(("Service", "gateway") in objs, "no Service for the gateway")

# The NATS values: a JetStream cluster as nats/hub.conf configures the hub,
# in operator mode from the Secret.
cfg = values["config"]
need(cfg["cluster"]["enabled"] is True and int(replicas) >= 3, "nats-values: not a cluster of three")
need(cfg["jetstream"]["enabled"] is True, "nats-values: JetStream off")
js = cfg["jetstream"].get("merge", {})
need(re.search(rf"^\s*domain:\s*{js.get('domain')}\s*$", hub_conf, re.M) is not None, f"nats-values: domain {js.get('domain')} is not nats/hub.conf's")
need(re.search(rf"^\s*sync_interval:\s*{js.get('sync_interval')}\s*$", hub_conf, re.M) is not None,
     f"nats-values: sync_interval {js.get('sync_interval')} is not nats/hub.conf's")
includes = [v for k, v in cfg.get("merge", {}).items() if k.endswith("$include")]
mounts = [p["value"] for p in values["container"].get("patch", []) if p.get("path") == "/volumeMounts/-"]
vols = [p["value"] for p in values["podTemplate"].get("patch", []) if p.get("path") == "/spec/volumes/-"]
need(any(m["mountPath"] == "/etc/nats-config/" + i.rsplit("/", 1)[0] for i in includes for m in mounts),
     "nats-values: the resolver include is not where the Secret is mounted")
need(any(v.get("secret", {}).get("secretName") == "sysmonstm-nats-resolver" for v in vols),
     "nats-values: the resolver does not come from the Secret sysmonstm-nats-resolver")

if bad:
    print("check-deploy: deploy/ does not match the stack:", *bad, sep="\n  ", file=sys.stderr)
    sys.exit(1)
EOF
echo "deploy/: valid against Kubernetes 1.29 and 1.37, and matches compose.yaml"
