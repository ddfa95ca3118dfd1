/** Small waiting helpers shared by the driver's modules. */

/** The signal's reason as an Error (the host aborts with one naming cancel, timeout or shutdown). */
export const abortError = (signal: AbortSignal): Error =>
  signal.reason instanceof Error ? signal.reason : new Error(String(signal.reason ?? 'aborted'))

/** Waits `ms`. */
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))
