// Types for entry.js (plain JavaScript so that the bins choose their code without a TypeScript loader).
export const SEMI_SPACE_PER_LIMIT: number;
export const SEMI_SPACE_MIN_MIB: number;
export const SEMI_SPACE_MAX_MIB: number;
export const NON_HEAP_RESERVE_MIB: number;
export const NON_HEAP_RESERVE_FRACTION: number;
export const OLD_SPACE_MIN_MIB: number;
export function parseMemory(s: string): number;
export function memoryLimit(env: NodeJS.ProcessEnv, constrained: number, total: number): number | undefined;
export function v8Flags(limitBytes: number, given?: string, defaultHeapMiB?: number): string[];
export function chooseCode(env: NodeJS.ProcessEnv, distExists: boolean): 'dist' | 'src';
export function start(opts: { dist: URL; src: URL; exportName?: string; size?: boolean }): Promise<void>;
export const MALLOC_ENV: Record<string, string>;
