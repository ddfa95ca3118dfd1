import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

/**
 * How the gateway and the GPU host declare their Prometheus series: a table of one line per series
 * (name with its unit, label names, help text), made in one registry by {@link declareSeries}.
 *
 * @example
 * const s = declareSeries(registry, {
 *   submitted: counter('gateway_jobs_submitted_total', ['type'], 'Jobs accepted, by type.'),
 * })
 * s.submitted.inc({ type: 'train_lora' })
 */
type Declare<M> = (registers: Registry[]) => M

export const counter =
  <L extends string = never>(name: string, labelNames: readonly L[], help: string): Declare<Counter<L>> =>
  (registers) =>
    new Counter<L>({ name, help, labelNames, registers })

/** A gauge; `collect` (optional) sets its values when the registry is scraped. */
export const gauge =
  <L extends string = never>(
    name: string,
    labelNames: readonly L[],
    help: string,
    collect?: (this: Gauge<L>) => void,
  ): Declare<Gauge<L>> =>
  (registers) =>
    new Gauge<L>({ name, help, labelNames, registers, ...(collect ? { collect } : {}) })

export const histogram =
  <L extends string = never>(
    name: string,
    labelNames: readonly L[],
    buckets: readonly number[],
    help: string,
  ): Declare<Histogram<L>> =>
  (registers) =>
    new Histogram<L>({ name, help, labelNames, buckets: [...buckets], registers })

/** Makes every series of `table` in `registry`, in the table's order; returns them by the table's keys. */
export function declareSeries<T extends Record<string, Declare<unknown>>>(
  registry: Registry,
  table: T,
): { [K in keyof T]: ReturnType<T[K]> } {
  const registers = [registry]
  return Object.fromEntries(Object.entries(table).map(([key, make]) => [key, make(registers)])) as {
    [K in keyof T]: ReturnType<T[K]>
  }
}
