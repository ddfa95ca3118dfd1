import * as v from 'valibot'

/** Relative to `DATA_DIR` (or absolute inside it); containment is checked by `resolveDatasetPath`. */
export const DatasetPath = v.pipe(v.string(), v.minLength(1), v.maxLength(1024))
export const Epochs = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1000))
