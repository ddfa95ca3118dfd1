/** `npm run gpu-host`: one GPU host (compose, Kubernetes). Needs DATABASE_URL and S3_ENDPOINT. */
import { runStandalone } from '../schema/standalone.ts'
import { GpuHost } from './host.ts'

await runStandalone({
  name: 'gpu-host',
  ports: (config) => [
    {
      variable: 'METRICS_PORT',
      host: config.metricsHost,
      port: config.metricsPort,
      what: 'the GPU host /metrics',
    },
  ],
  poolSize: 5,
  start: async (o) => {
    const host = new GpuHost(o)
    await host.start()
    return host
  },
})
