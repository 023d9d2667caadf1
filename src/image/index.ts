// Ferry process images: checkpoint files and the migration wire. See format.ts.

export {
  ImageError, MAGIC, FORMAT_VERSION, SectionType, SECTION_VERSIONS, PAGE_SIZES, DEFAULT_PAGE_SIZE,
  sectionName,
} from './format.ts';
export type { ImageErrorCode, KnownSectionName } from './format.ts';
export { encodeImage, decodeImage, imageLength, sha256Hex, showHead, FERRY_VERSION } from './codec.ts';
export type { DecodeOptions } from './codec.ts';
export { checkImageTarget, writeImageFile, writeImageChunks, readImageFile, readImageBytes, writeChunks } from './file.ts';
export { MemoryImage } from './memory.ts';
export type { MemoryPage, MemoryRun, PageCounts } from './memory.ts';
export { checkGlobal, globalValueToString, parseGlobalValue, globalBits } from './globals.ts';
export { summarizeImage, formatSummary } from './summary.ts';
export type { ImageSummary } from './summary.ts';
export type * from './types.ts';
