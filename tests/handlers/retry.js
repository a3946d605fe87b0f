// Test handler for the retry contract: event.mode picks what the attempt does;
// ctx is the worker's second argument { key, messageId, attempt, headers }.
function handler(event, ctx) {
  switch (event.mode) {
    case 'ctx':
      return { ctx };
    case 'until':
      // Asks for a retry until attempt `event.succeedOn`.
      if (ctx.attempt < event.succeedOn) {
        throw new RetryError('not yet', { delayMs: event.delayMs });
      }
      return { id: event.id, attempt: ctx.attempt, messageId: ctx.messageId, key: ctx.key };
    case 'always':
      throw new RetryError('never ' + event.id, { delayMs: event.delayMs });
    case 'spin':
      for (;;) {}
    case 'throw':
      throw new Error('plain failure');
    default:
      return { id: event.id, attempt: ctx.attempt };
  }
}
