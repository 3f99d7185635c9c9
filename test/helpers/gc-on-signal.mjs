// Test-only preload (node --expose-gc --import): SIGUSR2 runs a full garbage collection and
// reports process.memoryUsage() on stderr, so a test can measure the memory the process retains.
process.on('SIGUSR2', () => {
  globalThis.gc()
  process.stderr.write(`tenant-proxy-test: gc done ${JSON.stringify(process.memoryUsage())}\n`)
})
