// Thread entry for the module transform. binaryen is imported before the TypeScript
// loader is registered: through the loader its 14 MB file takes seconds to load.
import 'binaryen';
import { register } from 'tsx/esm/api';
register();
await import('./transform-thread.ts');
