// Test handler: module and global state that must never survive from one event to the next.
let count = 0;
function handler(event) {
  count += 1;
  globalThis.seen = (globalThis.seen || 0) + 1;
  return { count, seen: globalThis.seen, id: event.id };
}
