/** `npm run gateway`: the gateway alone (compose, Kubernetes). Needs DATABASE_URL and S3_ENDPOINT. */
import { createS3Client } from '../schema/clients.ts'
import { openDatabase } from '../schema/db/connect.ts'
import { configOrExit, createLogger, onShutdown, redisOrExit } from '../schema/runtime.ts'
import { startGateway } from './server.ts'

const config = configOrExit()
const logger = createLogger(config, 'gateway')
if (!config.databaseUrl || !config.s3.endpoint) {
  process.stderr.write(
    'npm run gateway needs DATABASE_URL and S3_ENDPOINT (use `npm start` for the embedded all-in-one mode)\n',
  )
  process.exit(2)
}
await redisOrExit(config)
const database = await openDatabase({ url: config.databaseUrl })
const gateway = await startGateway({
  config,
  database,
  s3: createS3Client({ ...config.s3, endpoint: config.s3.endpoint }),
  logger,
})
onShutdown(logger, async () => {
  await gateway.close()
  await database.close()
})
