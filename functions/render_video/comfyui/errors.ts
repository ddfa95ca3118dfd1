/** The job errors ComfyUI's refusals and failures become, naming the node and input. */
import type { ComfyGraph } from '../../../schema/params/render-video.ts'
import { NonRetryableError, RetryableError } from '../../sdk/errors.ts'

interface NodeError {
  errors?: { type?: string; message?: string; details?: string; extra_info?: Record<string, unknown> }[]
  class_type?: string
}
export interface PromptRefusal {
  error?: { type?: string; message?: string; details?: string } | string
  node_errors?: Record<string, NodeError> | unknown[]
}

/**
 * The job's error for a 400 from POST /prompt: every refused node and input as a params path
 * (`params.workflow.<id>.inputs.<name>`), with ComfyUI's message and error type. `details` is left out
 * where it would echo the rejected value.
 */
export function describeRefusal(body: PromptRefusal): string {
  const error = typeof body.error === 'string' ? { message: body.error } : (body.error ?? {})
  const parts: string[] = []
  const nodeErrors = body.node_errors && !Array.isArray(body.node_errors) ? body.node_errors : {}
  for (const [id, node] of Object.entries(nodeErrors)) {
    for (const e of node.errors ?? []) {
      const input = typeof e.extra_info?.input_name === 'string' ? e.extra_info.input_name : undefined
      const where = `params.workflow.${id}${input ? `.inputs.${input}` : ''}`
      const exception =
        typeof e.extra_info?.exception_message === 'string' ? e.extra_info.exception_message : ''
      const detail = exception || (e.type?.startsWith('exception') ? (e.details ?? '') : '')
      parts.push(
        `${where} (${node.class_type ?? 'node'}): ${e.message ?? 'invalid'}${detail ? `: ${detail}` : ''} [${e.type ?? 'error'}]`,
      )
    }
  }
  if (parts.length === 0) {
    // invalid_prompt (an unknown class) names its node only in `details`: "Node ID '#1'".
    const node = /#([^'\s]+)'?/.exec(error.details ?? '')?.[1]
    parts.push(
      `${node ? `params.workflow.${node}: ` : ''}${error.message ?? 'refused'} [${error.type ?? 'error'}]`,
    )
  }
  return `ComfyUI refused the workflow: ${parts.join('; ')}`
}

export interface ExecutionError {
  node_id?: string
  node_type?: string
  exception_type?: string
  exception_message?: string
  traceback?: string[]
}

/** The job's error for a failed run: the node, its type and the exception, as ComfyUI sent them. */
export function executionFailure(data: ExecutionError, graph: ComfyGraph): Error {
  const node = data.node_id ?? '?'
  const type = data.node_type ?? graph[node]?.class_type ?? 'node'
  const exception = `${data.exception_type ?? 'error'}: ${(data.exception_message ?? 'no message').trim()}`
  const message = `ComfyUI failed in node ${node} (${type}): ${exception}`
  // Out of memory can pass on another attempt (another GPU, less load); anything else would fail the same.
  if (/out ?of ?memory|OutOfMemory/i.test(exception))
    return new RetryableError(message, { code: 'COMFYUI_EXECUTION_ERROR' })
  return new NonRetryableError(message, { reason: 'non_retryable', code: 'COMFYUI_EXECUTION_ERROR' })
}
