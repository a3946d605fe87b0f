// Test handler written as an ES module: an exported handler and module-scope code.
const greeting = 'Hello';
export function handler(event, ctx) {
  return { message: `${greeting}, ${event.name}!`, key: ctx.key, attempt: ctx.attempt };
}
