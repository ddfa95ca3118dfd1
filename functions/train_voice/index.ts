import { JOB_CATALOG, type TrainVoiceParams } from '../../schema/params/index.ts'
import { countByExtension, type Dataset, trainOnDataset } from '../dataset.ts'
import { encodeWav, synthesizeVoice } from '../formats/wav.ts'
import type { HandlerContext } from '../sdk/context.ts'
import { defineHandler, engineResult } from '../sdk/define.ts'
import { reportAndPrint, STEPS_PER_EPOCH, simulateTraining } from '../simulate.ts'
import { trainWithF5tts } from './f5tts.ts'

/** Artifact names, relative to `voices/<jobId>/`. */
export const VOICE_FILE = 'voice.wav'
export const SPEAKER_FILE = 'speaker.json'

/** F5-TTS works at 24 kHz (its mel spectrograms and vocoder); the sample has the same rate. */
export const SAMPLE_RATE = 24_000
const SAMPLE_SECONDS = 4

const AUDIO_EXTENSIONS = ['.wav', '.flac', '.mp3', '.ogg', '.m4a', '.opus']

/**
 * Voice cloning. Engines: `f5tts` (F5-TTS `prepare_csv_wavs.py` and `finetune_cli.py` from F5TTS_DIR, see
 * ./f5tts.ts and docs/engines/f5tts.md: uploads `model_last.pt`, `vocab.txt`, `speaker.json`) and `simulate`,
 * which runs `epochs x 10` timed steps and writes a voice-like 24 kHz mono `voice.wav` (its INFO comment
 * says it is simulated) and a `speaker.json` describing the voice.
 */
export default defineHandler({
  type: 'train_voice',
  run: trainOnDataset({ simulate, f5tts: trainWithF5tts }),
})

async function simulate(p: TrainVoiceParams, dataset: Dataset, ctx: HandlerContext) {
  const clips = countByExtension(dataset, AUDIO_EXTENSIONS)
  reportAndPrint(
    ctx,
    0,
    `fine-tuning F5TTS_v1_Base (simulated): ${dataset.files} files, ${p.epochs} epochs, ${p.epochs * STEPS_PER_EPOCH} updates`,
  )
  const { totalSteps, finalLoss } = await simulateTraining(ctx, {
    epochs: p.epochs,
    vramMb: JOB_CATALOG.train_voice.defaults.vramMb,
    digits: 3,
    // F5-TTS's flow-matching loss starts near 1 and flattens out around 0.6-0.7 when fine-tuning.
    loss: { start: 1.05, floor: 0.64, rate: 2.5 },
    message: ({ step, epoch, loss }) => `Epoch ${epoch}/${p.epochs} - update=${step}, loss=${loss}`,
  })

  reportAndPrint(ctx, 97, `Saved last checkpoint at update ${totalSteps}`)
  // Seeded by the speaker, so every job for one speaker yields the same simulated voice.
  const samples = synthesizeVoice({
    seconds: SAMPLE_SECONDS,
    sampleRate: SAMPLE_RATE,
    seed: `speaker:${p.speakerName}`,
  })
  const wav = encodeWav(samples, SAMPLE_RATE, {
    INAM: `${p.speakerName} (simulated voice)`,
    IART: p.speakerName,
    ICMT: 'Simulated by gpu-jobs (engine "simulate"): a synthetic voice-like tone, not a trained voice clone.',
    ISFT: 'gpu-jobs simulate engine',
  })
  await ctx.artifacts.put(VOICE_FILE, wav)
  const durationSec = samples.length / SAMPLE_RATE
  const speaker = {
    speakerName: p.speakerName,
    language: p.language,
    baseModel: p.baseModel,
    referenceAudio: VOICE_FILE,
    sampleRate: SAMPLE_RATE,
    durationSec,
    epochs: p.epochs,
    updates: totalSteps,
    finalLoss,
    engine: 'simulate',
    simulated: true,
  }
  await ctx.artifacts.put(SPEAKER_FILE, `${JSON.stringify(speaker, null, 2)}\n`)
  reportAndPrint(ctx, 100, `voice saved: ${VOICE_FILE} (${durationSec} s at ${SAMPLE_RATE} Hz)`)

  return {
    ...engineResult('simulate', [VOICE_FILE, SPEAKER_FILE]),
    speakerName: p.speakerName,
    language: p.language,
    epochs: p.epochs,
    steps: totalSteps,
    updates: totalSteps,
    datasetFiles: dataset.files,
    audioFiles: clips,
    finalLoss,
    sampleRate: SAMPLE_RATE,
    durationSec,
  }
}
