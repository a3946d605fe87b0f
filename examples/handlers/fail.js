// Always throws: the outcome is {"error": {"code": "ERR_HANDLER_THREW", "message": "Error: ..."}}.
function handler(event) {
  throw new Error('this handler always fails' + (event && event.reason ? ': ' + event.reason : ''));
}
