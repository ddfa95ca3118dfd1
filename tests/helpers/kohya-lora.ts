import { expect } from 'vitest'
import { type ParsedSafetensors, readSafetensors } from '../../functions/formats/safetensors.ts'

/** What `ss_datasets` says of the one dataset of a run with `--dataset_config`. */
export interface KohyaDataset {
  resolution: number[]
  num_train_images: number
  subsets: { image_dir: string; num_repeats: number; class_tokens: string }[]
}

/**
 * Reads a LoRA that kohya's train_network.py wrote (its `lora.safetensors`) and checks what every run of
 * ours writes: networks.lora named `lora`, the given `ss_*` metadata, and its one dataset in `ss_datasets`.
 */
export function expectKohyaLora(
  bytes: Uint8Array | undefined,
  metadata: Record<string, string>,
  dataset: KohyaDataset,
): ParsedSafetensors {
  expect(bytes).toBeDefined()
  const lora = readSafetensors(bytes ?? new Uint8Array())
  expect(lora.metadata).toMatchObject({
    ss_network_module: 'networks.lora',
    ss_output_name: 'lora',
    ...metadata,
  })
  expect(JSON.parse(lora.metadata.ss_datasets ?? '')).toMatchObject([dataset])
  return lora
}
