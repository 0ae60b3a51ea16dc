// Validates docker/k8s/*.yaml without a cluster: every object against the Kubernetes
// OpenAPI schema (the npm package kubernetes-models, whose validate() checks types,
// required fields and unknown fields), then the structure fisherd relies on: gRPC
// probes on a declared port, requests and limits, every Secret key the pod reads,
// every $(VAR) defined before its use, each Service selecting the pods of one workload
// and targeting a named port, the kustomization's list (every listed file present,
// every manifest listed). With --data-dir (durable sessions): the directory on a
// persistent volume (a StatefulSet's volumeClaimTemplate or a PersistentVolumeClaim), a
// startup probe that covers recovery, and a grace period that outlasts the drain plus
// the snapshots on drain; a StatefulSet's serviceName must be a headless Service besides
// the one Service clients use. One replica, or several behind HAProxy: a StatefulSet
// (one claim per pod), each pod naming itself (--replica-name=$(POD_NAME) from the
// downward API), and an HAProxy workload whose ConfigMap is HAPROXY_CFG byte for byte,
// with one server line and one FISHERD_REPLICA_K (the pod's fully qualified name under
// the headless Service, and its gRPC port) per replica; clients' Service selects the
// proxy, not the replicas; a NetworkPolicy on the replicas must let the proxy in.
//
// usage: node k8s_validate.mjs NODE_MODULES_DIR MANIFEST_DIR HAPROXY_CFG
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [modulesDir, manifestDir, haproxyCfgPath] = process.argv.slice(2);
const load = (name) => import(pathToFileURL(path.join(modulesDir, name)).href);
const YAML = await load("yaml/dist/index.js");

const failures = [];
const fail = (where, message) => failures.push(`${where}: ${message}`);
const objects = [];
let kustomization = null;

const manifestFiles = fs.readdirSync(manifestDir).filter((f) => /\.ya?ml$/.test(f)).sort();
for (const file of manifestFiles) {
  const text = fs.readFileSync(path.join(manifestDir, file), "utf8");
  for (const doc of YAML.parseAllDocuments(text)) {
    if (doc.errors.length) {
      fail(file, doc.errors.map((e) => e.message).join("; "));
      continue;
    }
    const object = doc.toJS();
    if (object === null) continue;
    if (object.kind === "Kustomization") {
      kustomization = { file, object };
      continue;
    }
    const where = `${file} ${object.kind}/${object.metadata?.name}`;
    const apiVersion = object.apiVersion ?? "";
    const group = apiVersion.includes("/") ? apiVersion : `v1`;
    let Model;
    try {
      const module = await load(`kubernetes-models/${group}/${object.kind}.js`);
      Model = module[object.kind];
    } catch (error) {
      fail(where, `unknown apiVersion/kind ${apiVersion} ${object.kind}`);
      continue;
    }
    try {
      new Model(object).validate();
      console.log(`schema ok: ${where}`);
    } catch (error) {
      fail(where, `schema: ${error.message}`);
    }
    objects.push({ where, object });
  }
}

const byKind = (kind) => objects.filter((o) => o.object.kind === kind);
const workloads = [...byKind("Deployment"), ...byKind("StatefulSet")];
// HAProxy's workloads run it explicitly (command: haproxy ...); every other one is fisherd.
const isProxy = (w) => w.object.spec.template.spec.containers.some((c) => (c.command ?? [])[0] === "haproxy");
const proxies = workloads.filter(isProxy);
const servers = workloads.filter((w) => !isProxy(w));
if (servers.length !== 1) fail("manifests", `expected one fisherd Deployment or StatefulSet, found ${servers.length}`);
const secrets = new Map(byKind("Secret").map((o) => [o.object.metadata.name, o.object]));
const configMaps = new Map(byKind("ConfigMap").map((o) => [o.object.metadata.name, o.object]));
const services = byKind("Service");
const isHeadless = (service) => service.object.spec?.clusterIP === "None";
const podLabels = (w) => w.object.spec.template.metadata?.labels ?? {};
// An equality selector (a Service's, a matchLabels) selects labels that hold all its pairs.
const selects = (selector, labels) =>
  Object.keys(selector ?? {}).length > 0 && Object.entries(selector).every(([k, v]) => labels[k] === v);
const portNames = (w) => new Set(w.object.spec.template.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name)));
// The files a secret or configMap volume shows: its items' paths, else every key.
const volumeFiles = (volume) => {
  const source = volume.secret ?? volume.configMap;
  if (source.items) return new Map(source.items.map((i) => [i.path, i.key]));
  const object = volume.secret ? secrets.get(source.secretName) : configMaps.get(source.name);
  const keys = Object.keys({ ...(object?.data ?? {}), ...(object?.stringData ?? {}) });
  return new Map(keys.map((k) => [k, k]));
};
// The Secret or ConfigMap behind a volume, and the keys it holds (undefined: not among
// the manifests).
const volumeSource = (volume) => {
  const object = volume.secret ? secrets.get(volume.secret.secretName) : configMaps.get(volume.configMap.name);
  const label = volume.secret ? `Secret ${volume.secret.secretName}` : `ConfigMap ${volume.configMap.name}`;
  const keys = object && new Set([...Object.keys(object.data ?? {}), ...Object.keys(object.stringData ?? {})]);
  return { object, label, keys };
};
// Where a file path lies: the mount (a secret or configMap volume) and the file's name in
// it, or undefined.
const fileUnderMount = (c, volumes, filePath) => {
  for (const mount of c.volumeMounts ?? []) {
    const volume = volumes.get(mount.name);
    if (!volume || !(volume.secret || volume.configMap)) continue;
    const dir = mount.mountPath.replace(/\/+$/, "");
    if (filePath.startsWith(dir + "/")) return { mount, volume, name: filePath.slice(dir.length + 1) };
  }
  return undefined;
};
// Kubernetes expands $(VAR) in env values, args and command only for variables defined
// earlier in env; anything else stays as literal text.
const checkEnvReferences = (cw, c) => {
  const defined = new Set();
  const undefinedIn = (text) => [...String(text).matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)]
    .map((m) => m[1]).filter((name) => !defined.has(name));
  for (const e of c.env ?? []) {
    for (const name of undefinedIn(e.value ?? "")) fail(cw, `env ${e.name} uses $(${name}), which no earlier env entry defines`);
    defined.add(e.name);
  }
  for (const text of [...(c.command ?? []), ...(c.args ?? [])]) {
    for (const name of undefinedIn(text)) fail(cw, `${text}: $(${name}) is no env entry of the container`);
  }
};
const envValue = (c, name) => (c.env ?? []).find((e) => e.name === name);
// An env entry's value with earlier $(VAR)s expanded, those from the downward API's
// metadata.namespace as NAMESPACE.
const expandedEnv = (c, name) => {
  const values = new Map();
  for (const e of c.env ?? []) {
    const field = e.valueFrom?.fieldRef?.fieldPath;
    const value = field === "metadata.namespace" ? "NAMESPACE" : field ? `<${field}>` :
      String(e.value ?? "").replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => values.get(v) ?? m);
    values.set(e.name, value);
  }
  return values.get(name);
};
// fisherd's own default --drain-seconds; the image passes 5, so this errs long.
const DEFAULT_DRAIN_SECONDS = 10;
// What the grace period must leave after the drain for the snapshots on drain.
const SNAPSHOT_MARGIN_SECONDS = 15;
const flagValue = (args, name) => {
  // fisherd takes the last of repeated flags, as arguments after the image's entrypoint
  // override its defaults.
  const found = args.filter((a) => a.startsWith(`--${name}=`));
  return found.length ? found[found.length - 1].slice(name.length + 3) : undefined;
};

// The replicas the proxy must list: the fisherd StatefulSet's pods, when there are several.
let ring = null;
for (const { where, object } of servers) {
  const pod = object.spec.template;
  const labels = pod.metadata?.labels ?? {};
  for (const [k, v] of Object.entries(object.spec.selector?.matchLabels ?? {})) {
    if (labels[k] !== v) fail(where, `selector ${k}=${v} does not match the pod labels`);
  }
  const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  // A StatefulSet's claim templates are volumes of its pod too, each on its own claim.
  const claimTemplates = new Set((object.spec.volumeClaimTemplates ?? []).map((t) => t.metadata?.name));
  for (const c of pod.spec.containers) {
    const cw = `${where} container ${c.name}`;
    const ports = new Map((c.ports ?? []).map((p) => [p.containerPort, p]));
    const args = c.args ?? [];
    checkEnvReferences(cw, c);
    const dataDir = flagValue(args, "data-dir");
    const durable = Boolean(dataDir);
    const probeNames = ["livenessProbe", "readinessProbe"];
    // Recovery (snapshots, then the log) runs before fisherd opens any port: without a
    // startup probe the liveness probe would kill a long recovery, again and again.
    if (durable || c.startupProbe) probeNames.push("startupProbe");
    for (const probeName of probeNames) {
      const probe = c[probeName];
      if (!probe?.grpc) { fail(cw, `${probeName} must be a gRPC probe`); continue; }
      if (!ports.has(probe.grpc.port)) fail(cw, `${probeName} port ${probe.grpc.port} is not a declared containerPort`);
    }
    // The probe port must be fisherd's plaintext health listener (kubelet speaks no TLS).
    const healthArg = args.find((a) => a.startsWith("--health-listen="));
    const usesTls = args.some((a) => a.startsWith("--tls-cert="));
    if (usesTls) {
      const healthPort = healthArg ? Number(healthArg.split(":").pop()) : NaN;
      if (probeNames.some((name) => c[name]?.grpc && c[name].grpc.port !== healthPort)) {
        fail(cw, "with TLS the gRPC probes must target the --health-listen port");
      }
    }
    const dataMount = durable ?
      (c.volumeMounts ?? []).find((m) => m.mountPath.replace(/\/+$/, "") === dataDir.replace(/\/+$/, "")) : undefined;
    // Each replica holds other sessions, and two processes must never share a data
    // directory: several replicas need stable names (a StatefulSet's pods), a claim each
    // (its volumeClaimTemplate), to name themselves in their errors, and a proxy routing
    // every session to its replica (checked below).
    const replicas = object.spec.replicas ?? 1;
    if (replicas !== 1) {
      if (object.kind !== "StatefulSet") {
        fail(where, `${replicas} replicas need a StatefulSet (stable pod names the proxy can address)`);
      } else if (durable && !claimTemplates.has(dataMount?.name)) {
        fail(where, `with --data-dir, ${replicas} replicas need the directory on a volumeClaimTemplate (a claim per pod)`);
      }
      const replicaName = flagValue(args, "replica-name");
      const variable = /^\$\(([A-Za-z_][A-Za-z0-9_]*)\)$/.exec(replicaName ?? "")?.[1];
      if (!variable || envValue(c, variable)?.valueFrom?.fieldRef?.fieldPath !== "metadata.name") {
        fail(cw, "with several replicas each must name itself: --replica-name=$(POD_NAME), POD_NAME from the downward API (fieldRef metadata.name)");
      }
      const grpcPort = (c.ports ?? []).find((p) => p.name === "grpc")?.containerPort;
      if (grpcPort === undefined) fail(cw, "no containerPort named grpc (the port the proxy reaches)");
      if (object.kind === "StatefulSet") {
        ring = { where, name: object.metadata.name, serviceName: object.spec.serviceName, replicas, grpcPort, labels };
      }
    }
    if (durable) {
      // The data directory must outlive the pod: a claim, not the container's file system
      // (read-only here anyway) or an emptyDir.
      const mount = dataMount;
      if (!mount) {
        fail(cw, `--data-dir=${dataDir} is no volumeMount's mountPath`);
      } else if (mount.readOnly) {
        fail(cw, `--data-dir=${dataDir} is mounted read-only`);
      } else if (!claimTemplates.has(mount.name) && !volumes.get(mount.name)?.persistentVolumeClaim) {
        fail(cw, `--data-dir=${dataDir} is on volume ${mount.name}, which is no volumeClaimTemplate or PersistentVolumeClaim`);
      }
      if (object.kind === "Deployment" && object.spec.strategy?.type !== "Recreate") {
        fail(where, "with --data-dir a Deployment must use strategy Recreate (no second pod on the volume)");
      }
      const drainArg = flagValue(args, "drain-seconds");
      const drain = drainArg === undefined ? DEFAULT_DRAIN_SECONDS : Number(drainArg);
      const grace = pod.spec.terminationGracePeriodSeconds ?? 30;
      if (!(grace >= drain + SNAPSHOT_MARGIN_SECONDS)) {
        fail(where, `terminationGracePeriodSeconds ${grace} leaves ${grace - drain} s after --drain-seconds ${drain}; the snapshots on drain need at least ${SNAPSHOT_MARGIN_SECONDS} s`);
      }
    }
    for (const kind of ["requests", "limits"]) {
      for (const resource of ["cpu", "memory"]) {
        if (!c.resources?.[kind]?.[resource]) fail(cw, `resources.${kind}.${resource} missing`);
      }
    }
    // Every file argument under a secret mount must be a file of that volume: a key of the
    // Secret, or an item's path (whose key the Secret must hold).
    for (const mount of c.volumeMounts ?? []) {
      const volume = volumes.get(mount.name);
      if (!volume && claimTemplates.has(mount.name)) continue;
      if (!volume) { fail(cw, `volumeMount ${mount.name} has no volume`); continue; }
      if (!volume.secret) continue;
      const secret = secrets.get(volume.secret.secretName);
      if (!secret) { fail(cw, `Secret ${volume.secret.secretName} is not among the manifests`); continue; }
      const keys = new Set([...Object.keys(secret.stringData ?? {}), ...Object.keys(secret.data ?? {})]);
      const files = volumeFiles(volume);
      for (const [file, key] of files) {
        if (!keys.has(key)) fail(cw, `volume ${volume.name}: Secret ${secret.metadata.name} has no key ${key} (for ${file})`);
      }
      for (const arg of args) {
        const value = arg.split("=").slice(1).join("=");
        if (value.startsWith(mount.mountPath + "/")) {
          const file = value.slice(mount.mountPath.length + 1);
          if (!files.has(file)) fail(cw, `${arg}: volume ${volume.name} (Secret ${secret.metadata.name}) has no file ${file}`);
        }
      }
      for (const key of ["tls.crt", "tls.key", "token"]) {
        if (!keys.has(key)) fail(cw, `Secret ${secret.metadata.name} lacks ${key}`);
      }
    }
    if (!args.some((a) => a.startsWith("--auth-token-file="))) fail(cw, "no --auth-token-file");
  }
  if (object.kind === "StatefulSet") {
    // Its governing Service: headless, so that it names the pod rather than balancing.
    const governing = services.find((s) => s.object.metadata.name === object.spec.serviceName);
    if (!object.spec.serviceName) fail(where, "no serviceName (the headless Service naming its pod)");
    else if (!governing) fail(where, `serviceName ${object.spec.serviceName} is no Service among the manifests`);
    else if (!isHeadless(governing)) fail(where, `serviceName ${object.spec.serviceName} must be headless (clusterIP: None)`);
    else if (!selects(governing.object.spec.selector, labels)) {
      fail(where, `serviceName ${object.spec.serviceName} does not select its pods`);
    }
  }
}

// HAProxy: its configuration is docker/haproxy/haproxy.cfg, unchanged, and its environment
// names every replica of the ring, in order.
const haproxyCfg = fs.readFileSync(haproxyCfgPath, "utf8");
// The variables of its server lines, in order: FISHERD_REPLICA_0, _1, ...
const serverVariables = [...haproxyCfg.matchAll(/^\s*server\s+\S+\s+"\$\{([A-Z0-9_]+)\}"/gm)].map((m) => m[1]);
const hardStopAfter = Number(/^\s*hard-stop-after\s+(\d+)s\s*$/m.exec(haproxyCfg)?.[1] ?? 0);
const firstDifference = (a, b) => {
  const la = a.split("\n"), lb = b.split("\n");
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) return `line ${i + 1}: ${JSON.stringify(la[i] ?? "<end>")} vs ${JSON.stringify(lb[i] ?? "<end>")}`;
  }
  return "the same lines, different bytes";
};
for (const { where, object } of proxies) {
  const pod = object.spec.template;
  const volumes = new Map((pod.spec.volumes ?? []).map((v) => [v.name, v]));
  if ((object.spec.replicas ?? 1) < 1) fail(where, "no proxy replica");
  if (!pod.spec.securityContext?.runAsNonRoot) fail(where, "HAProxy must run as non-root (runAsNonRoot)");
  if (!((pod.spec.terminationGracePeriodSeconds ?? 30) > hardStopAfter)) {
    fail(where, `terminationGracePeriodSeconds must outlast hard-stop-after (${hardStopAfter} s)`);
  }
  for (const c of pod.spec.containers.filter((c) => (c.command ?? [])[0] === "haproxy")) {
    const cw = `${where} container ${c.name}`;
    checkEnvReferences(cw, c);
    const command = [...c.command, ...(c.args ?? [])];
    const configPath = command[command.indexOf("-f") + 1];
    if (!command.includes("-f") || !configPath) { fail(cw, "no -f CONFIG"); continue; }
    const file = fileUnderMount(c, volumes, configPath);
    if (!file?.volume.configMap) { fail(cw, `-f ${configPath} is in no configMap volume`); continue; }
    const key = volumeFiles(file.volume).get(file.name);
    const configMap = configMaps.get(file.volume.configMap.name);
    if (!configMap) { fail(cw, `ConfigMap ${file.volume.configMap.name} is not among the manifests`); continue; }
    const text = configMap.data?.[key];
    if (text === undefined) fail(cw, `ConfigMap ${configMap.metadata.name} has no ${file.name} (-f ${configPath})`);
    else if (text !== haproxyCfg) {
      fail(cw, `ConfigMap ${configMap.metadata.name} key ${key} differs from ${path.basename(haproxyCfgPath)} ` +
        `(${firstDifference(text, haproxyCfg)}); regenerate it as docker/k8s/haproxy.yaml's header says`);
    }
    const ports = new Map((c.ports ?? []).map((p) => [p.containerPort, p]));
    const listen = envValue(c, "FISHERD_PROXY_LISTEN")?.value;
    if (!listen) fail(cw, "no FISHERD_PROXY_LISTEN");
    else if (!ports.has(Number(listen.split(":").pop()))) fail(cw, `FISHERD_PROXY_LISTEN ${listen}: its port is no containerPort`);
    for (const probeName of ["readinessProbe", "livenessProbe"]) {
      const probe = c[probeName];
      const port = probe?.tcpSocket?.port ?? probe?.grpc?.port ?? probe?.httpGet?.port;
      if (port === undefined) fail(cw, `no ${probeName}`);
      else if (!ports.has(port) && ![...ports.values()].some((p) => p.name === port)) fail(cw, `${probeName} port ${port} is not a declared containerPort`);
    }
    for (const kind of ["requests", "limits"]) {
      for (const resource of ["cpu", "memory"]) {
        if (!c.resources?.[kind]?.[resource]) fail(cw, `resources.${kind}.${resource} missing`);
      }
    }
    // TLS files: in a mounted Secret, the key beside the certificate (HAProxy reads
    // CERT.key when CERT holds no key).
    const tlsCert = envValue(c, "FISHERD_PROXY_TLS_CERT")?.value;
    const clientCa = envValue(c, "FISHERD_PROXY_CLIENT_CA")?.value;
    if (clientCa && !tlsCert) fail(cw, "FISHERD_PROXY_CLIENT_CA without FISHERD_PROXY_TLS_CERT");
    for (const [variable, filePath] of [["FISHERD_PROXY_TLS_CERT", tlsCert], ["FISHERD_PROXY_TLS_CERT's key", tlsCert && `${tlsCert}.key`],
                                          ["FISHERD_PROXY_CLIENT_CA", clientCa]]) {
      if (!filePath) continue;
      const found = fileUnderMount(c, volumes, filePath);
      if (!found) { fail(cw, `${variable} ${filePath} is in no secret or configMap volume`); continue; }
      const source = volumeSource(found.volume);
      const sourceKey = volumeFiles(found.volume).get(found.name);
      if (!source.object) fail(cw, `${source.label} is not among the manifests`);
      else if (!sourceKey || !source.keys.has(sourceKey)) fail(cw, `${variable} ${filePath}: ${source.label} provides no ${found.name}`);
    }
    // One server line per replica, each variable set to that pod's name under the headless
    // Service, fully qualified (HAProxy's lookups while running use no search domains).
    if (!ring) continue;
    if (serverVariables.length !== ring.replicas) {
      fail(cw, `${path.basename(haproxyCfgPath)} has ${serverVariables.length} server lines, ${ring.where} ${ring.replicas} replicas`);
    }
    serverVariables.forEach((variable, k) => {
      const value = expandedEnv(c, variable);
      if (value === undefined) { fail(cw, `no env ${variable} (server line ${k + 1} of the configuration)`); return; }
      const expected = new RegExp(`^${ring.name}-${k}\\.${ring.serviceName}\\.NAMESPACE\\.svc\\.[a-z0-9.-]+:${ring.grpcPort}$`);
      if (!expected.test(value)) {
        fail(cw, `${variable}=${value}: expected ${ring.name}-${k}.${ring.serviceName}.$(POD_NAMESPACE).svc.CLUSTER-DOMAIN:${ring.grpcPort}`);
      }
    });
  }
}
if (ring && proxies.length === 0) {
  fail(ring.where, `${ring.replicas} replicas need a proxy that routes each session to its replica (HAProxy, haproxy.yaml)`);
}

// Each Service selects the pods of exactly one workload and targets its named ports.
for (const { where: sw, object: service } of services) {
  const selected = workloads.filter((w) => selects(service.spec.selector, podLabels(w)));
  if (selected.length !== 1) {
    fail(sw, `selector ${JSON.stringify(service.spec.selector)} matches the pods of ${selected.length} workloads, not 1`);
    continue;
  }
  const names = portNames(selected[0]);
  for (const p of service.spec.ports) {
    if (typeof p.targetPort === "string" && !names.has(p.targetPort)) {
      fail(sw, `targetPort ${p.targetPort} is no named container port of ${selected[0].where}`);
    }
  }
}
// No workload's selector may take in another's pods.
for (const w of workloads) {
  for (const other of workloads) {
    if (other !== w && selects(w.object.spec.selector?.matchLabels, podLabels(other))) {
      fail(w.where, `its selector also matches the pods of ${other.where}`);
    }
  }
}
// Clients get one load-balanced address; a headless Service only names pods. With several
// replicas that address is the proxy's: a Service balancing over the replicas would send
// a session's calls to replicas that do not hold it.
const clientServices = services.filter((s) => !isHeadless(s));
if (clientServices.length !== 1) fail("manifests", `expected one Service for clients (not headless), found ${clientServices.length}`);
if (ring) {
  for (const { where: sw, object: service } of clientServices) {
    if (selects(service.spec.selector, ring.labels)) fail(sw, `selects the ${ring.replicas} fisherd replicas; it must select the proxy`);
  }
}
// A NetworkPolicy on the replicas must still let the proxy reach their gRPC port, and
// the kubelet their probes' port.
for (const { where, object: policy } of byKind("NetworkPolicy")) {
  const server = servers.find((w) => selects(policy.spec.podSelector?.matchLabels, podLabels(w)));
  if (!server) { fail(where, "selects no fisherd pods"); continue; }
  if (!(policy.spec.policyTypes ?? ["Ingress"]).includes("Ingress")) continue;
  const containers = server.object.spec.template.spec.containers;
  const container = containers.find((c) => (c.ports ?? []).some((p) => p.name === "grpc")) ?? containers[0];
  const portNumber = (port) => typeof port === "number" ? port :
    (container.ports ?? []).find((p) => p.name === port)?.containerPort;
  const admits = (port, labels) => (policy.spec.ingress ?? []).some((rule) =>
    (!rule.ports || rule.ports.some((p) => portNumber(p.port) === port)) &&
    (!rule.from || (labels && rule.from.some((peer) => peer.podSelector && !peer.namespaceSelector &&
      selects(peer.podSelector.matchLabels, labels)))));
  for (const p of (policy.spec.ingress ?? []).flatMap((rule) => rule.ports ?? [])) {
    if (typeof p.port === "string" && portNumber(p.port) === undefined) fail(where, `port ${p.port} is no named port of ${server.where}`);
  }
  const grpcPort = portNumber("grpc");
  for (const proxy of proxies) {
    if (!admits(grpcPort, podLabels(proxy))) fail(where, `keeps ${proxy.where} from the replicas' gRPC port ${grpcPort}`);
  }
  const probePorts = new Set(["startupProbe", "readinessProbe", "livenessProbe"]
    .map((name) => container[name]?.grpc?.port).filter((port) => port !== undefined));
  for (const port of probePorts) {
    if (!admits(port, null)) fail(where, `keeps the kubelet's probes from port ${port}`);
  }
}
if (kustomization) {
  const listed = new Set(kustomization.object.resources ?? []);
  for (const resource of listed) {
    if (!fs.existsSync(path.join(manifestDir, resource))) fail(kustomization.file, `missing ${resource}`);
  }
  // A manifest left out of the list would be validated here but never applied.
  for (const file of manifestFiles) {
    if (file !== kustomization.file && !listed.has(file)) fail(kustomization.file, `does not list ${file}`);
  }
}

if (failures.length) {
  for (const f of failures) console.error(`FAIL ${f}`);
  process.exit(1);
}
console.log(`k8s manifests valid: ${objects.length} objects, schema and structure`);
