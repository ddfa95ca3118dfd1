import * as v from 'valibot'

/**
 * What a params field may say about its control in the web console's form, beside its JSON Schema (the
 * console builds every form from the params schemas in /openapi.json): `rows`, a text area of that many
 * rows; `half`, whether it takes half a row (numbers do unless `false`; two halves in a row share it);
 * `placeholder`, the text shown while it is empty. Emitted as the JSON Schema extension key `x-form`.
 */
export interface FormHints {
  rows?: number
  half?: boolean
  placeholder?: string
}
export const form = <TInput>(hints: FormHints): v.MetadataAction<TInput, { 'x-form': FormHints }> =>
  v.metadata({ 'x-form': hints })

/** Relative to `DATA_DIR` (or absolute inside it); containment is checked by `resolveDatasetPath`. */
export const DatasetPath = v.pipe(
  v.string(),
  v.minLength(1),
  v.maxLength(1024),
  v.description("Relative to the gateway's DATA_DIR."),
  v.examples(['demo']),
)
export const Epochs = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1000))
