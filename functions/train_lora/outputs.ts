/** What train_lora stores and reads, shared by its engines (simulate and kohya). */

/** Artifact names, relative to `loras/<jobId>/`. */
export const LORA_FILE = 'lora.safetensors'
export const CONFIG_FILE = 'training_config.toml'

/** kohya's default `--network_alpha`; the effective LoRA scale is alpha / rank. */
export const NETWORK_ALPHA = 1

/** Extensions kohya's dataset loader takes as images (train_util.IMAGE_EXTENSIONS, compared lower case). */
export const IMAGE_EXTENSIONS = ['.png', '.jpg', '.jpeg', '.webp', '.bmp']
