/** `npm run gateway`: the gateway alone (compose, Kubernetes). Needs DATABASE_URL and S3_ENDPOINT. */
import { runStandalone } from '../schema/standalone.ts'
import { gatewayHostname, startGateway } from './server.ts'

await runStandalone({
  name: 'gateway',
  ports: (config) => [
    {
      variable: 'GATEWAY_PORT',
      host: gatewayHostname(config),
      port: config.gatewayPort,
      what: 'the gateway',
    },
  ],
  start: ({ s3, ...o }) => startGateway({ ...o, s3: s3.client }),
})
