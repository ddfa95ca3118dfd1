/** The request-body rule: submissions are JSON (a cross-site form cannot send it) and at most `maxBytes`. */
import type { MiddlewareHandler } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { every } from 'hono/combine'
import { ApiError } from '../errors.ts'

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i

/**
 * `content-type: application/json` (or `application/*+json`), else 415; over `maxBytes`, 413 with
 * `connection: close` (the rest of the body is not read, so the connection cannot be reused).
 */
export const jsonBody = ({ maxBytes }: { maxBytes: number }): MiddlewareHandler =>
  every(
    async function requireJson(c, next) {
      if (!JSON_TYPE.test(c.req.header('content-type') ?? ''))
        throw new ApiError(
          415,
          'unsupported_media_type',
          'send the body as JSON, with content-type: application/json',
        )
      return next()
    },
    bodyLimit({
      maxSize: maxBytes,
      onError: (c) =>
        c.json(new ApiError(413, 'too_large', `the body must be at most ${maxBytes} bytes`).toJSON(), 413, {
          connection: 'close',
        }),
    }),
  )
