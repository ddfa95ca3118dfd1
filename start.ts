/**
 * `npm start`: gateway and GPU host in one process for one machine. Embedded Postgres (PGlite under
 * DATA_DIR) unless DATABASE_URL is set, an embedded S3 server (s3rver under DATA_DIR) unless S3_ENDPOINT
 * is set, and an embedded Redis (redis-server under DATA_DIR) when REDIS_URL is unset, none answers at the
 * default address and redis-server is installed. One instance per DATA_DIR (DATA_DIR/.lock).
 */
import { mkdir, stat, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import path from 'node:path'
import S3rver from 's3rver'
import { gatewayHostname, startGateway } from './gateway/server.ts'
import { GpuHost } from './gpu-host/host.ts'
import { createS3Client, probeRedis } from './schema/clients.ts'
import { openDatabase } from './schema/db/connect.ts'
import { type EmbeddedRedis, findOnPath, startEmbeddedRedis } from './schema/embedded-redis.ts'
import { configOrExit, createLogger, onShutdown, redisUnreachableMessage } from './schema/runtime.ts'
import { assertPortsFree, exitOnStartupError, lockDataDir, type PortUse } from './schema/startup.ts'

/** A 1x1 PNG: enough for the simulate engines, which count a dataset's files. */
const PIXEL_PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64',
)

/** On first run, `DATA_DIR/demo` gets a few sample files so the README's walkthrough works as is. */
async function seedDemoDataset(dataDir: string, log: { info(msg: string): void }): Promise<void> {
  const demo = path.join(dataDir, 'demo')
  if (
    await stat(demo).then(
      () => true,
      () => false,
    )
  )
    return
  await mkdir(demo, { recursive: true })
  for (let i = 1; i <= 4; i++) {
    await writeFile(path.join(demo, `sample${i}.png`), PIXEL_PNG)
    await writeFile(path.join(demo, `sample${i}.txt`), `a photo of sks person, sample ${i}`)
  }
  log.info(`created a demo dataset in ${demo} (datasetPath "demo")`)
}

const config = configOrExit()
const logger = createLogger(config, 'gpu-jobs')
const ports: PortUse[] = [
  { variable: 'GATEWAY_PORT', host: gatewayHostname(config), port: config.gatewayPort, what: 'the gateway' },
  {
    variable: 'METRICS_PORT',
    host: config.metricsHost,
    port: config.metricsPort,
    what: 'the GPU host /metrics',
  },
  ...(config.s3.endpoint
    ? []
    : [
        {
          variable: 'S3RVER_PORT',
          host: '127.0.0.1',
          port: config.s3rverPort,
          what: 'the embedded S3 server',
        },
      ]),
]

/** Everything that was started, stopped in reverse on Ctrl-C/SIGTERM. */
const stops: (() => Promise<void>)[] = []

try {
  // Before anything is opened: a second instance must not touch the first one's PGlite, S3 or Redis files,
  // and a taken port must not leave a half-started instance that takes jobs it cannot report.
  const release = await lockDataDir(config.dataDir)
  stops.push(async () => release())
  await assertPortsFree(ports)

  const redisDown = await probeRedis(config.redisUrl).then(
    () => undefined,
    (err: unknown) => err,
  )
  if (redisDown) {
    const server = config.redisDefault ? await findOnPath('redis-server') : undefined
    if (!server) {
      process.stderr.write(redisUnreachableMessage(config, redisDown))
      process.exit(1)
    }
    const redis: EmbeddedRedis = await startEmbeddedRedis({
      server,
      dir: path.join(config.dataDir, 'redis'),
      url: config.redisUrl,
    })
    stops.push(() => redis.stop())
    logger.info(
      { redis: config.redisUrl, directory: redis.dir, pid: redis.pid },
      `embedded Redis at ${config.redisUrl} (redis-server, AOF under ${redis.dir}; set REDIS_URL to use your own)`,
    )
  }

  await seedDemoDataset(config.dataDir, logger)

  const database = await openDatabase({
    url: config.databaseUrl,
    pgliteDir: path.join(config.dataDir, 'pglite'),
  })
  stops.push(() => database.close())
  logger.info(
    { database: database.kind === 'pglite' ? path.join(config.dataDir, 'pglite') : 'DATABASE_URL' },
    `database: ${database.kind}`,
  )

  let endpoint = config.s3.endpoint
  if (!endpoint) {
    const dir = path.join(config.dataDir, 's3')
    await mkdir(dir, { recursive: true })
    const s3rver = new S3rver({
      address: '127.0.0.1',
      port: config.s3rverPort,
      directory: dir,
      silent: true,
    })
    const addr = (await s3rver.run()) as AddressInfo
    stops.push(() => s3rver.close())
    endpoint = `http://127.0.0.1:${addr.port}`
    // s3rver accepts any secret but only this access key.
    config.s3.accessKeyId = 'S3RVER'
    config.s3.secretAccessKey = 'S3RVER'
    logger.info(
      {
        endpoint,
        bucket: config.s3.bucket,
        accessKeyId: 'S3RVER',
        secretAccessKey: 'S3RVER',
        directory: dir,
      },
      `embedded S3 server at ${endpoint} (access key S3RVER, secret S3RVER; e.g. aws --endpoint-url ${endpoint} s3 ls s3://${config.s3.bucket} --recursive)`,
    )
  }
  const s3 = createS3Client({ ...config.s3, endpoint })
  const host = new GpuHost({
    config,
    database,
    s3: { client: s3, endpoint },
    logger: logger.child({ component: 'gpu-host' }),
  })
  stops.push(() => host.close())
  await host.start()
  const gateway = await startGateway({ config, database, s3, logger: logger.child({ component: 'gateway' }) })
  stops.push(() => gateway.close())
  logger.info(
    `ready: submit a job with  curl -XPOST ${gateway.url}/api/train -H 'content-type: application/json' -d '{"type":"train_lora","params":{"baseModel":"sd15","datasetPath":"demo"}}'`,
  )
} catch (err) {
  exitOnStartupError(err, ports)
}

onShutdown(logger, async () => {
  for (const stop of stops.reverse()) await stop()
})
