/**
 * Imported first by main.ts, so it runs before any other module is loaded: keeps V8's young
 * generation at its starting size (see capYoungGeneration). Loading modules and then the
 * registry index would otherwise grow it to 16-32 MB that stay resident for the process's life.
 */
import { capYoungGeneration } from './gc.js'

capYoungGeneration()
