import { createRng } from './prng.ts'
import { floatBytes, type TensorSpec } from './safetensors.ts'

/**
 * The tensor layout kohya `sd-scripts` (`networks.lora`) saves for Stable Diffusion 1.5: every adapted
 * Linear module `<name>` gets `<name>.lora_down.weight` [rank, in], `<name>.lora_up.weight` [out, rank] and a
 * scalar `<name>.alpha`. Module names are the diffusers paths with `.` replaced by `_`, prefixed
 * `lora_unet_` or `lora_te_`. We emit a representative subset (the real file adapts every attention,
 * projection and feed-forward layer), with SD1.5's true widths so tools that inspect shapes are satisfied.
 */
export interface LoraModule {
  name: string
  inFeatures: number
  outFeatures: number
}

/** CLIP ViT-L/14's hidden size: the text encoder width and the UNet's cross-attention context size. */
const CLIP_DIM = 768

/** UNet transformer blocks we adapt, with their channel widths (SD1.5: 320, 640, 1280, 1280 mid). */
const UNET_BLOCKS: readonly [string, number][] = [
  ['down_blocks_0_attentions_0', 320],
  ['down_blocks_0_attentions_1', 320],
  ['down_blocks_1_attentions_0', 640],
  ['down_blocks_2_attentions_0', 1280],
  ['mid_block_attentions_0', 1280],
  ['up_blocks_1_attentions_0', 1280],
  ['up_blocks_2_attentions_0', 640],
  ['up_blocks_3_attentions_2', 320],
]

const TEXT_ENCODER_LAYERS = [0, 11]

/** The SD1.5 modules our simulated LoRA adapts, in a stable order. */
export function sd15LoraModules(): LoraModule[] {
  const modules: LoraModule[] = []
  for (const [block, ch] of UNET_BLOCKS) {
    const base = `lora_unet_${block}_transformer_blocks_0`
    // attn1 is self-attention (ch -> ch); attn2 is cross-attention whose keys and values come from CLIP.
    for (const proj of ['to_q', 'to_k', 'to_v', 'to_out_0'])
      modules.push({ name: `${base}_attn1_${proj}`, inFeatures: ch, outFeatures: ch })
    modules.push({ name: `${base}_attn2_to_q`, inFeatures: ch, outFeatures: ch })
    modules.push({ name: `${base}_attn2_to_k`, inFeatures: CLIP_DIM, outFeatures: ch })
    modules.push({ name: `${base}_attn2_to_v`, inFeatures: CLIP_DIM, outFeatures: ch })
    modules.push({ name: `${base}_attn2_to_out_0`, inFeatures: ch, outFeatures: ch })
  }
  for (const layer of TEXT_ENCODER_LAYERS) {
    const base = `lora_te_text_model_encoder_layers_${layer}`
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj'])
      modules.push({ name: `${base}_self_attn_${proj}`, inFeatures: CLIP_DIM, outFeatures: CLIP_DIM })
    modules.push({ name: `${base}_mlp_fc1`, inFeatures: CLIP_DIM, outFeatures: CLIP_DIM * 4 })
    modules.push({ name: `${base}_mlp_fc2`, inFeatures: CLIP_DIM * 4, outFeatures: CLIP_DIM })
  }
  return modules
}

/**
 * The tensors of a simulated SD1.5 LoRA of `rank`, with deterministic small weights from `seed`. `lora_up`
 * stays close to zero (kohya initialises it to zero), so loading the file barely changes the base model.
 * Tensor bytes are made lazily, one tensor at a time, when the file is written.
 */
export function sd15LoraTensors(opts: {
  rank: number
  alpha: number
  seed: string | number
  dtype?: 'F16' | 'F32'
}): Record<string, TensorSpec> {
  const { rank, alpha, seed, dtype = 'F16' } = opts
  const tensors: Record<string, TensorSpec> = {}
  for (const m of sd15LoraModules()) {
    // One stream per module, so a tensor's bytes do not depend on the order they are made in.
    const downScale = 1 / Math.sqrt(m.inFeatures)
    tensors[`${m.name}.lora_down.weight`] = {
      dtype,
      shape: [rank, m.inFeatures],
      data: () => {
        const rand = createRng(`${seed}:${m.name}:down`)
        return floatBytes(dtype, rank * m.inFeatures, () => (rand() * 2 - 1) * downScale)
      },
    }
    tensors[`${m.name}.lora_up.weight`] = {
      dtype,
      shape: [m.outFeatures, rank],
      data: () => {
        const rand = createRng(`${seed}:${m.name}:up`)
        return floatBytes(dtype, m.outFeatures * rank, () => (rand() * 2 - 1) * 2e-3)
      },
    }
    tensors[`${m.name}.alpha`] = { dtype, shape: [], data: () => floatBytes(dtype, 1, () => alpha) }
  }
  return tensors
}
