import { existsSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ENV_VARS } from '../../schema/config.ts'
import { readRepoFile, repoRoot, run, which } from './helpers.ts'
import { get, isMap, parseYamlDocuments, type YamlMap, type YamlValue } from './yaml.ts'

const K8S_DIR = 'infra/k8s'
const NAMESPACE = 'gpu-jobs'
const CLUSTER_SCOPED = new Set(['Namespace', 'Kustomization'])

const files = readdirSync(path.join(repoRoot, K8S_DIR))
  .filter((f) => f.endsWith('.yaml') || f.endsWith('.yml'))
  .sort()

interface Manifest {
  file: string
  doc: YamlMap
}

const manifests: Manifest[] = files.flatMap((file) =>
  parseYamlDocuments(readRepoFile(path.join(K8S_DIR, file))).map((doc) => {
    if (!isMap(doc)) throw new Error(`${file}: a document is not a mapping`)
    return { file, doc }
  }),
)

const ofKind = (kind: string): Manifest[] => manifests.filter((m) => m.doc.kind === kind)
const named = (kind: string, name: string): YamlMap | undefined =>
  ofKind(kind).find((m) => get(m.doc, 'metadata', 'name') === name)?.doc
const list = (value: YamlValue | undefined): YamlValue[] => (Array.isArray(value) ? value : [])

const gpuHosts = ofKind('Deployment').filter(
  (m) => get(m.doc, 'metadata', 'labels', 'app.kubernetes.io/name') === 'gpu-host',
)
const configMap = named('ConfigMap', 'gpu-jobs-config')
const secret = named('Secret', 'gpu-jobs-secrets')

function container(deployment: YamlMap): YamlMap {
  const c = list(get(deployment, 'spec', 'template', 'spec', 'containers'))[0]
  if (!isMap(c)) throw new Error('no container')
  return c
}

function volumeFor(deployment: YamlMap, mountPath: string): YamlMap | undefined {
  const mount = list(get(container(deployment), 'volumeMounts')).find(
    (m) => get(m, 'mountPath') === mountPath,
  )
  const name = get(mount, 'name')
  const vol = list(get(deployment, 'spec', 'template', 'spec', 'volumes')).find(
    (v) => get(v, 'name') === name,
  )
  return isMap(vol) ? vol : undefined
}

/** The variables a container gets: its `envFrom` ConfigMap (this one, when it references it), then `env`. */
function containerEnv(c: YamlMap, config: YamlMap | undefined): Map<string, string> {
  const env = new Map<string, string>()
  const configName = get(config, 'metadata', 'name')
  for (const from of list(get(c, 'envFrom')))
    if (get(from, 'configMapRef', 'name') === configName)
      for (const [k, v] of Object.entries((get(config, 'data') as YamlMap) ?? {})) env.set(k, String(v))
  for (const e of list(get(c, 'env'))) {
    const value = get(e, 'value')
    if (value !== undefined) env.set(String(get(e, 'name')), String(value))
  }
  return env
}

/** A probe's port resolved to a number through the container's named ports. */
function probePort(c: YamlMap, probe: string): number | undefined {
  const port = get(c, probe, 'httpGet', 'port')
  if (typeof port === 'number') return port
  const match = list(get(c, 'ports')).find((p) => get(p, 'name') === port)
  const n = get(match, 'containerPort')
  return typeof n === 'number' ? n : undefined
}

describe('Kubernetes manifests (infra/k8s)', () => {
  it('has the expected files', () => {
    expect(files).toEqual(
      expect.arrayContaining([
        'namespace.yaml',
        'config.yaml',
        'storage.yaml',
        'gateway.yaml',
        'gpu-host.yaml',
        'keda.yaml',
      ]),
    )
  })

  it('gives every object apiVersion, kind, metadata.name and the namespace', () => {
    for (const { file, doc } of manifests) {
      expect(typeof doc.apiVersion, file).toBe('string')
      expect(typeof doc.kind, file).toBe('string')
      if (doc.kind === 'Kustomization') continue
      const name = get(doc, 'metadata', 'name')
      expect(
        typeof name === 'string' && /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name),
        `${file}: ${name}`,
      ).toBe(true)
      if (!CLUSTER_SCOPED.has(String(doc.kind)))
        expect(get(doc, 'metadata', 'namespace'), `${file}: ${name}`).toBe(NAMESPACE)
    }
    expect(named('Namespace', NAMESPACE)).toBeDefined()
  })

  it('lists only existing files in kustomization.yaml', () => {
    const kustomization = ofKind('Kustomization')[0]?.doc
    expect(kustomization).toBeDefined()
    for (const resource of list(get(kustomization, 'resources'))) {
      expect(existsSync(path.join(repoRoot, K8S_DIR, String(resource))), String(resource)).toBe(true)
    }
  })

  it('selects its own pods in every Deployment and Service', () => {
    for (const { file, doc } of ofKind('Deployment')) {
      const selector = get(doc, 'spec', 'selector', 'matchLabels')
      const labels = get(doc, 'spec', 'template', 'metadata', 'labels')
      expect(isMap(selector) && Object.keys(selector).length > 0, file).toBe(true)
      expect(labels, file).toMatchObject(selector as YamlMap)
      const c = container(doc)
      expect(typeof get(c, 'image'), file).toBe('string')
      expect(get(c, 'resources', 'requests'), file).toBeDefined()
      expect(get(doc, 'spec', 'template', 'spec', 'securityContext', 'runAsNonRoot'), file).toBe(true)
    }
    for (const { file, doc } of ofKind('Service')) {
      const selector = get(doc, 'spec', 'selector') as YamlMap
      const target = ofKind('Deployment').find((d) => {
        const labels = get(d.doc, 'spec', 'template', 'metadata', 'labels') as YamlMap
        return Object.entries(selector).every(([k, v]) => labels[k] === v)
      })
      expect(target, `${file}: Service ${get(doc, 'metadata', 'name')} selects no Deployment`).toBeDefined()
    }
  })

  it('runs the gateway behind a Service on 8080 with health probes', () => {
    const gateway = named('Deployment', 'gateway')
    expect(gateway).toBeDefined()
    const c = container(gateway as YamlMap)
    expect(get(c, 'readinessProbe', 'httpGet', 'path')).toBe('/readyz')
    expect(get(c, 'livenessProbe', 'httpGet', 'path')).toBe('/healthz')
    expect(probePort(c, 'readinessProbe')).toBe(8080)
    expect(get(named('Service', 'gateway'), 'spec', 'ports', 0, 'port')).toBe(8080)
  })

  it('gives each GPU host one GPU, a node pool, the shared models volume and a drain-long grace period', () => {
    expect(gpuHosts.length).toBeGreaterThan(0)
    const shutdown = Number(get(configMap, 'data', 'SHUTDOWN_GRACE_SEC') ?? 30)
    const kill = Number(get(configMap, 'data', 'KILL_GRACE_SEC') ?? 10)
    for (const { doc } of gpuHosts) {
      const name = String(get(doc, 'metadata', 'name'))
      const spec = get(doc, 'spec', 'template', 'spec')
      const c = container(doc)
      expect(get(c, 'resources', 'limits', 'nvidia.com/gpu'), name).toBe(1)
      const selector = get(spec, 'nodeSelector')
      expect(isMap(selector) && Object.keys(selector).length > 0, `${name} nodeSelector`).toBe(true)
      expect(Number(get(spec, 'terminationGracePeriodSeconds')), name).toBeGreaterThan(shutdown + kill)

      const models = volumeFor(doc, '/opt/models')
      const claim = get(models, 'persistentVolumeClaim', 'claimName')
      expect(typeof claim, `${name} mounts no PVC at /opt/models`).toBe('string')
      const pvc = named('PersistentVolumeClaim', String(claim))
      expect(list(get(pvc, 'spec', 'accessModes')), `${name}: ${claim}`).toContain('ReadWriteMany')

      expect(get(c, 'readinessProbe', 'httpGet', 'path'), name).toBe('/readyz')
      expect(get(c, 'livenessProbe', 'httpGet', 'path'), name).toBe('/healthz')
      expect(probePort(c, 'readinessProbe'), name).toBe(9464)
      expect(probePort(c, 'livenessProbe'), name).toBe(9464)
      // /metrics and the probes bind loopback unless METRICS_HOST says otherwise: kubelet and Prometheus
      // come from outside the pod.
      expect(containerEnv(c, configMap).get('METRICS_HOST'), name).toBe('0.0.0.0')
    }
  })

  it('scales the GPU hosts with KEDA on the BullMQ wait list', () => {
    const scaled = ofKind('ScaledObject')
    expect(scaled.length).toBeGreaterThan(0)
    const deployments = new Set(ofKind('Deployment').map((d) => get(d.doc, 'metadata', 'name')))
    for (const { doc } of scaled) {
      const target = get(doc, 'spec', 'scaleTargetRef', 'name')
      expect(deployments.has(target as string), `ScaledObject targets ${target}`).toBe(true)
      const lists = list(get(doc, 'spec', 'triggers'))
        .filter((t) => get(t, 'type') === 'redis')
        .map((t) => get(t, 'metadata', 'listName'))
      expect(lists).toContain('bull:gpu-jobs:wait')
    }
    // Prioritized jobs are in a sorted set the list scaler cannot see: the file must say so.
    expect(readRepoFile(path.join(K8S_DIR, 'keda.yaml'))).toContain('bull:gpu-jobs:prioritized')
  })

  it('configures only known variables and ships no secret values', () => {
    const known = new Set<string>(ENV_VARS)
    for (const key of Object.keys((get(configMap, 'data') as YamlMap) ?? {}))
      expect(known.has(key), key).toBe(true)
    const secretData = get(secret, 'stringData') as YamlMap
    expect(isMap(secretData)).toBe(true)
    for (const [key, value] of Object.entries(secretData)) {
      expect(known.has(key) || key === 'REDIS_PASSWORD', key).toBe(true)
      expect(value, `${key} must stay empty in the example`).toBe('')
    }
    expect(get(secret, 'data')).toBeUndefined()
  })

  const yamllint = which('yamllint')
  it.skipIf(!yamllint)(
    yamllint
      ? 'passes yamllint'
      : 'passes yamllint (skipped: yamllint not installed; apt-get install yamllint)',
    async () => {
      const config =
        '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments-indentation: disable, truthy: {check-keys: false}}}'
      const result = await run(yamllint as string, ['-s', '-f', 'parsable', '-d', config, K8S_DIR])
      expect(result.code, result.stdout + result.stderr).toBe(0)
    },
  )
})
