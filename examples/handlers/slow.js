// Busy-waits for event.ms milliseconds (default 1000) and reports how long it ran.
// Past the CPU or wall-clock limit the worker stops it with ERR_CANCELLED.
function handler(event) {
  const ms = typeof event.ms === 'number' ? event.ms : 1000;
  const start = Date.now();
  let spins = 0;
  while (Date.now() - start < ms) spins++;
  return { slept_ms: Date.now() - start, spins, id: event.id };
}
