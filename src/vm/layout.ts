// Where the runtime's bookkeeping lives inside the guest's own linear memory.
// V8 11.3 has no multi-memory, so the stop flag, asyncify stack and page maps share
// the program's memory. Every process gets a shared memory already grown to the full
// 4 GiB (a virtual reservation) and the bookkeeping sits in the top 8 MiB at fixed
// addresses, so each check is one load with a constant offset. The program sees a
// virtual memory.size (a logical-size global) that never reaches this region.

export const WASM_PAGE = 65536;
export const PHYSICAL_PAGES = 65536;                 // 4 GiB
export const BOOKKEEPING_BYTES = 8 * 1024 * 1024;
export const BOOKKEEPING_BASE = 2 ** 32 - BOOKKEEPING_BYTES; // 0xFF800000
/** The program may grow its logical memory up to here. */
export const MAX_LOGICAL_PAGES = (BOOKKEEPING_BASE / WASM_PAGE) | 0; // 65408

/** Tracking granularity for dirty and present maps (the migration page size may be larger). */
export const TRACK_SHIFT = 12;
export const TRACK_PAGE = 1 << TRACK_SHIFT;          // 4 KiB
export const TRACK_PAGES = 2 ** 32 / TRACK_PAGE;     // 1 Mi entries, one byte each

export const STOP_FLAG = BOOKKEEPING_BASE;           // i32: non-zero = reach a safe point
/** i32: the program's logical memory size in wasm pages (memory.size), written by its
 *  memory.grow and by the runtime at start: how big the process is, without dirty tracking. */
export const LOGICAL_PAGES_WORD = BOOKKEEPING_BASE + 4;
export const ASYNCIFY_DATA = BOOKKEEPING_BASE + 8;   // {i32 current, i32 end}
export const DIRTY_MAP = BOOKKEEPING_BASE + 0x1000;  // 1 byte per 4 KiB page: 1 = written
// 1 byte per 4 KiB page: 1 = not local yet (post-copy, demand paging). Zero (fresh memory) = all local.
export const ABSENT_MAP = DIRTY_MAP + TRACK_PAGES;
export const ASYNCIFY_STACK = ABSENT_MAP + TRACK_PAGES;
export const ASYNCIFY_STACK_END = 2 ** 32 - 16;

/** Import names the prepared module adds. */
export const FERRY_MODULE = 'ferry';
export const IMPORT_MEMORY = 'memory';
export const IMPORT_SAFEPOINT = 'safepoint';
export const IMPORT_FAULT = 'fault';
/** Export names the prepared module adds. */
export const EXPORT_LOGICAL_PAGES = 'ferry_logical_pages';
export const EXPORT_GLOBAL_PREFIX = 'ferry_global_';
export const EXPORT_START_FN = 'ferry_start_function';
/** Copies the (passive) data segments to their places: a fresh start's first step. */
export const EXPORT_INIT_DATA = 'ferry_init_data';
