// Keeps a module-level counter and a global. The worker restores every sandbox to its
// snapshot after each event, so both are 1 on every call: no state leaks between events.
let count = 0;
function handler(event) {
  count += 1;
  globalThis.seen = (globalThis.seen || 0) + 1;
  return { count, seen: globalThis.seen, id: event.id };
}
