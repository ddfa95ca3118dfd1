/** `npm run gpu-host`: one GPU host (compose, Kubernetes). Needs DATABASE_URL and S3_ENDPOINT. */
import { createS3Client } from '../schema/clients.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { configOrExit, createLogger, onShutdown, redisOrExit } from '../schema/runtime.ts'
import { assertPortsFree, exitOnStartupError, type PortUse } from '../schema/startup.ts'
import { GpuHost } from './host.ts'

const config = configOrExit()
const logger = createLogger(config, 'gpu-host')
if (!config.databaseUrl || !config.s3.endpoint) {
  process.stderr.write(
    'npm run gpu-host needs DATABASE_URL and S3_ENDPOINT (use `npm start` for the embedded all-in-one mode)\n',
  )
  process.exit(2)
}
const ports: PortUse[] = [
  {
    variable: 'METRICS_PORT',
    host: config.metricsHost,
    port: config.metricsPort,
    what: 'the GPU host /metrics',
  },
]
await assertPortsFree(ports).catch((err: unknown) => exitOnStartupError(err, ports))
await redisOrExit(config)
const database = await openDatabase({ url: config.databaseUrl, poolSize: 5 })
const host = new GpuHost({
  config,
  database,
  s3: {
    client: createS3Client({ ...config.s3, endpoint: config.s3.endpoint }),
    endpoint: config.s3.endpoint,
  },
  logger,
})
await host.start().catch((err: unknown) => exitOnStartupError(err, ports))
onShutdown(logger, async () => {
  await host.close()
  await database.close()
})
