/** `npm run gateway`: the gateway alone (compose, Kubernetes). Needs DATABASE_URL and S3_ENDPOINT. */
import { createS3Client } from '../schema/clients.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { configOrExit, createLogger, onShutdown, redisOrExit } from '../schema/runtime.ts'
import { assertPortsFree, exitOnStartupError, type PortUse } from '../schema/startup.ts'
import { gatewayHostname, startGateway } from './server.ts'

const config = configOrExit()
const logger = createLogger(config, 'gateway')
if (!config.databaseUrl || !config.s3.endpoint) {
  process.stderr.write(
    'npm run gateway needs DATABASE_URL and S3_ENDPOINT (use `npm start` for the embedded all-in-one mode)\n',
  )
  process.exit(2)
}
const ports: PortUse[] = [
  { variable: 'GATEWAY_PORT', host: gatewayHostname(config), port: config.gatewayPort, what: 'the gateway' },
]
await assertPortsFree(ports).catch((err: unknown) => exitOnStartupError(err, ports))
await redisOrExit(config)
const database = await openDatabase({ url: config.databaseUrl })
const gateway = await startGateway({
  config,
  database,
  s3: createS3Client({ ...config.s3, endpoint: config.s3.endpoint }),
  logger,
}).catch((err: unknown) => exitOnStartupError(err, ports))
onShutdown(logger, async () => {
  await gateway.close()
  await database.close()
})
