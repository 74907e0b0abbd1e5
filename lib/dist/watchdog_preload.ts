/**
 * Preloaded into every rank by the launcher (`deno run --preload`): starts
 * the {@link watchParent} watchdog, so a rank exits when its launcher dies.
 * Importing it anywhere else would do the same, so only the launcher does.
 *
 * @module
 */
import { watchParent } from "./watchdog.ts";

watchParent();
