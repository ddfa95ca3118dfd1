export * from './context.ts'
export * from './define.ts'
export * from './errors.ts'
